"""wandb: the mode resolution, offline files in the run directory, the API key nowhere."""

from __future__ import annotations


import pytest

from mpcl.config.compose import load
from mpcl.tracking.wandb_run import WandbRun, resolve_mode

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


def test_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))              # no ~/.netrc
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline" and resolve_mode("disabled") == "disabled"


def test_offline_run_writes_into_the_run_dir_without_the_key(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    cfg = load(None, [f"out={out}", "tracking.wandb=auto"])
    run = WandbRun.start(cfg, out)
    assert run is not None
    run.log({"train/loss": 1.5, "epoch": 0}, step=0)
    run.finish()
    assert (out / "wandb").is_dir() and (out / "wandb_id").is_file()
    for f in out.rglob("*"):
        if f.is_file():
            assert FAKE_KEY.encode() not in f.read_bytes(), f
