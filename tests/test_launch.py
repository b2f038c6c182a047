"""What the driver settles before training: paths resolved once against the start directory,
one-line errors before Ray starts (nothing written into ``out``), requests the cluster cannot
hold, addresses that are not a Ray GCS, errors in workers not retried, tracking the same with
and without Ray, missing Fashion-MNIST files written on the way."""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mpcl import cli
from mpcl.config.compose import load
from mpcl.launch import LaunchError
from tests.helpers.runs import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


# -- paths ------------------------------------------------------------------------------------

def test_paths_are_made_absolute_against_the_start_directory(tmp_path, monkeypatch):
    from mpcl.launch.preflight import resolve_paths

    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(load(None, ["out=runs/r", "data.path=data/x"]))
    assert cfg.out == str(tmp_path / "runs/r") and cfg.data.path == str(tmp_path / "data/x")
    default = resolve_paths(load(None, ["data.loader=ffcv"]))          # the preset's data/fmnist
    assert default.data.path == str(tmp_path / "data/fmnist")
    raw = resolve_paths(load(None, ["data.loader=torch"]))
    assert raw.data.path == "/usr/share/datasets/fashion-mnist"
    uris = resolve_paths(load(None, ["out=s3://bucket/runs/r", "data.path=gs://bucket/fmnist"]))
    assert uris.out == "s3://bucket/runs/r" and uris.data.path == "gs://bucket/fmnist"
    again = resolve_paths(cfg, base="/elsewhere")                       # absolute stays as it is
    assert again.out == cfg.out and again.data.path == cfg.data.path


# -- one line before Ray starts ------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["out_is_a_file", "batch_larger_than_split", "data_missing", "cuda_device",
                                  "cuda_workers"])
def test_preflight_errors_are_one_line_before_ray_and_write_nothing(case, tmp_path, monkeypatch, capsys,
                                                                   fmnist_path):
    if torch.cuda.is_available() and case.startswith("cuda"):
        pytest.skip("a CUDA device is visible")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "afile").write_text("keep me")
    out = "afile" if case == "out_is_a_file" else "runs/r"
    args = ["train", "--config", str(ROOT / "configs/fmnist_simclr.yaml"),
            *tiny_overrides(out, "simclr", **{"data.path": fmnist_path})]
    expect = {"out_is_a_file": f"out={tmp_path}/afile: exists and is not a directory",
              "batch_larger_than_split": "data.batch_size=128: larger than the training split (100 samples",
              "data_missing": f"{tmp_path}/data/cifar10/train.beton: .beton file not found; create it with "
                              "`python -m data_prep cifar10",
              "cuda_device": "train.device=cuda: no CUDA device is visible",
              "cuda_workers": "scale.use_gpu=true: no CUDA device is visible"}[case]
    extra = {"batch_larger_than_split": ["data.subset=100"],
             "data_missing": ["data.dataset=cifar10", "data.loader=ffcv", "data.path="],
             "cuda_device": ["train.device=cuda"], "cuda_workers": ["scale.use_gpu=true"]}.get(case, [])
    no_ray = [] if case == "cuda_workers" else ["--no-ray"]
    with pytest.raises(SystemExit) as e:
        cli.main([*args[:3], *no_ray, *args[3:], *extra])
    assert e.value.code == 2
    assert expect in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()                           # nothing written into out
    assert (tmp_path / "afile").read_text() == "keep me"
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


@pytest.mark.slow
def test_missing_fashion_mnist_betons_are_written_from_the_raw_files(tmp_path, monkeypatch, capsys, fmnist_path):
    """The presets read data/fmnist: on a fresh checkout the .beton files are written (one line)
    and training goes on; the same function writes them for `run.py demo`."""
    from mpcl.launch.preflight import preflight

    monkeypatch.chdir(tmp_path)
    cfg = preflight(load(str(ROOT / "configs/fmnist_simclr.yaml"), ["out=runs/r"]))
    assert cfg.data.path == str(tmp_path / "data/fmnist")
    assert (tmp_path / "data/fmnist/train.beton").is_file() and (tmp_path / "data/fmnist/val.beton").is_file()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"data: writing the Fashion-MNIST .beton files into {tmp_path}/data/fmnist "
                   f"(from {fmnist_path}, once)"]
    preflight(cfg)                                                     # present now: nothing to say
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "runs").exists()


# -- what the README names is installed; tracking the same with and without Ray ---------------

def test_tools_the_readme_names_are_dependencies():
    readme = (ROOT / "README.md").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for tool in ("optuna-dashboard", "wandb"):
        assert tool in readme
        assert f'"{tool}' in pyproject, f"{tool} is not in pyproject.toml's dependencies"
        importlib.metadata.distribution(tool)                          # installed by make setup


class _FakeWandbRun:
    def __init__(self, calls):
        self.calls = calls

    def log(self, metrics, step):
        self.calls.append(("log", step, dict(metrics)))

    def finish(self):
        self.calls.append(("finish",))


@pytest.mark.slow
def test_no_ray_run_logs_to_wandb_like_a_ray_run(tmp_path, monkeypatch, fmnist_path):
    """``--no-ray`` reaches wandb through the same record as Ray's rank 0: one log per epoch
    (step = epoch) holding what metrics.jsonl holds, then finish."""
    wandb = pytest.importorskip("wandb")
    calls: list = []

    def fake_init(**kwargs):
        calls.append(("init", kwargs["mode"], kwargs["dir"]))
        return _FakeWandbRun(calls)

    monkeypatch.setattr(wandb, "init", fake_init)
    out = tmp_path / "run"
    cli.main(["train", "--no-ray", *tiny_overrides(out, "simclr", **{
        "data.path": fmnist_path, "data.subset": 256, "data.val_subset": 128, "train.epochs": 2,
        "tracking.wandb": "offline"})])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert calls[0] == ("init", "offline", str(out))
    logs = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logs] == [0, 1]
    for (_, _, logged), row in zip(logs, rows):
        assert logged == row
    assert calls[-1] == ("finish",)


# -- Ray: addresses, cluster resources, errors in workers -----------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.timeout(60)
def test_an_address_that_is_not_a_ray_gcs_is_one_line(tmp_path, monkeypatch, capsys):
    """Something listens (an HTTP server, like the dashboard's port) but is not Ray's GCS."""
    monkeypatch.chdir(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    t0 = time.monotonic()
    try:
        with pytest.raises(SystemExit) as e:
            cli.main(["train", "--address", address, "--config", str(ROOT / "configs/fmnist_simclr.yaml"),
                      "out=runs/r"])
    finally:
        server.shutdown()
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert f"--address {address}: no Ray cluster (GCS) answers there" in line
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


@pytest.mark.ray
def test_a_real_gcs_answers_the_probe(local_ray):
    from mpcl.launch.cluster import check_address

    gcs = local_ray.get_runtime_context().gcs_address
    assert check_address(gcs) == gcs


@pytest.mark.ray
@pytest.mark.timeout(120)
@pytest.mark.parametrize("overrides, expect", [
    ({"scale.cpus_per_worker": 4}, "scale.cpus_per_worker=4: no node of the cluster has 4 CPU (the largest has 2)"),
    ({"scale.workers": 4, "data.batch_size": 128}, "scale.workers=4: the cluster holds 2 worker(s) of 1 CPU"),
    ({"scale.use_gpu": "true", "scale.gpus_per_worker": 0.25}, "scale.use_gpu=true: the cluster has no GPU"),
])
def test_a_request_the_cluster_cannot_hold_is_one_line(overrides, expect, tmp_path, local_ray, fmnist_path):
    from mpcl.launch.train import train

    cfg = load(None, tiny_overrides(tmp_path / "r", "simclr", **{"data.path": fmnist_path, **overrides}))
    with pytest.raises(LaunchError) as e:
        train(cfg)
    assert expect in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_a_cluster_that_may_grow_is_waited_for_a_bounded_time(tmp_path, local_ray, capsys):
    from mpcl.launch.cluster import check_cluster_fits

    cfg = load(None, ["scale.cpus_per_worker=64", f"out={tmp_path}"])
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match=r"scale.cpus_per_worker=64: no node of the cluster has 64 CPU .*"
                                          r"\(still, after waiting 1 s for the autoscaler\)"):
        check_cluster_fits(cfg, can_grow=True, wait_s=1.0)
    assert 1.0 <= time.monotonic() - t0 < 30
    assert "asking the autoscaler and waiting up to 1 s" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_sweep_resources_the_cluster_cannot_hold_are_one_line(tmp_path, local_ray, fmnist_path):
    import yaml

    from mpcl.launch.sweep import run_sweep

    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": str(ROOT / "configs/fmnist_simclr_attn.yaml"),
        "overrides": {"data.loader": "torch", "data.path": fmnist_path, "model.backbone": "small_cnn"},
        "space": {"method.temperature": {"type": "uniform", "low": 0.1, "high": 1.0}},
        "num_samples": 1, "resources": {"workers": 1, "gpus_per_worker": 0.25, "use_gpu": "true"},
        "out": str(tmp_path / "sweep")}))
    with pytest.raises(LaunchError, match=r"s\.yaml: resources\.use_gpu=true: the cluster has no GPU"):
        run_sweep(sweep)


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_a_data_error_in_a_worker_fails_once(tmp_path, local_ray):
    """Data the workers cannot read (here: ``train`` called without ``preflight``; on a
    cluster, a node without the files): the workers agree on it before training and the run
    ends once with the error's line, even with unlimited retries."""
    from mpcl.launch.train import train
    from mpcl.launch.worker import read_failure

    (tmp_path / "empty").mkdir()
    cfg = load(None, tiny_overrides(tmp_path / "r", "simclr", **{
        "data.loader": "ffcv", "data.path": str(tmp_path / "empty"), "scale.workers": 2,
        "scale.max_failures": -1}))
    with pytest.raises(LaunchError) as e:
        train(cfg)
    assert str(e.value).startswith(f"{tmp_path}/empty/train.beton: .beton file not found")
    assert read_failure(tmp_path / "r")["kind"] == "error"


def test_a_recorded_worker_error_is_one_line_and_its_restart_returns_at_once(tmp_path, monkeypatch):
    """A config or data error raised inside ``fit`` is recorded before it stops the worker
    group: the driver reports its line (not Ray's error), and the restart Ray makes
    (``scale.max_failures``) returns without training."""
    from mpcl.launch import train as launch_train
    from mpcl.launch.worker import write_failure

    cfg = load(None, [f"out={tmp_path}"])
    reason = "data/x/train.beton: .beton file not found"

    class FailingTrainer:
        def __init__(self, record: bool):
            self.record = record

        def fit(self):
            if self.record:
                write_failure(tmp_path, reason, "error")
            raise RuntimeError("TrainingFailedError: worker group failed")

    monkeypatch.setattr(launch_train, "make_trainer", lambda *a, **k: FailingTrainer(True))
    with pytest.raises(LaunchError, match=f"^{reason}$"):
        launch_train.run_trainer(cfg)
    assert launch_train.train_loop_per_worker({"cfg": cfg}) is None  # outside Ray: no ray.train call
    monkeypatch.setattr(launch_train, "make_trainer", lambda *a, **k: FailingTrainer(False))
    with pytest.raises(RuntimeError, match="worker group failed"):          # anything else: Ray's error
        launch_train.run_trainer(cfg)
