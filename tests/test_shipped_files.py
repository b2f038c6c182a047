"""Presets and sweep files ship inside the package and are named without a path, from any
working directory; a path keeps working and wins over a shipped file of the same name."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpcl.config import ConfigError
from mpcl.config.compose import load
from mpcl.config.presets import find, shipped_dir, shipped_names

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_files_are_the_checkouts():
    assert shipped_names("preset") == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert shipped_names("sweep") == sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
    assert "fmnist_demo" in shipped_names("sweep") and "cifar10_simclr" in shipped_names("preset")
    assert (shipped_dir("preset") / "parts" / "data" / "cifar10.yaml").is_file()


@pytest.mark.parametrize("name", ["cifar10_simclr", "cifar10_simclr.yaml", "configs/cifar10_simclr.yaml"])
def test_a_preset_by_name_from_anywhere(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                     # no configs/ here
    assert find("preset", name, "--config").resolve() == (ROOT / "configs" / "cifar10_simclr.yaml").resolve()
    cfg = load(name)
    assert cfg.method.name == "simclr" and cfg.data.dataset == "cifar10"


def test_a_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar10_simclr").write_text("method:\n  name: simsiam\n")
    assert load("cifar10_simclr").method.name == "simsiam"


def test_an_unknown_name_is_one_line_naming_the_key_and_the_choices(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load("cifar10_simclr_typo")
    message = str(e.value)
    assert "\n" not in message and message.startswith("--config cifar10_simclr_typo: no such file")
    assert "cifar10_simclr_attn" in message          # the shipped names, to choose from


def test_a_sweep_by_name_and_its_base_from_anywhere(tmp_path, monkeypatch):
    from mpcl.launch import LaunchError
    from mpcl.launch.sweep_spec import load_sweep

    monkeypatch.chdir(tmp_path)
    spec = load_sweep("fmnist_demo")
    assert spec.name == "fmnist_demo" and spec.out == "runs/sweeps/fmnist_demo"   # relative: under the cwd
    assert Path(spec.base).resolve() == (ROOT / "configs" / "fmnist_simclr_attn.yaml").resolve()
    with pytest.raises(LaunchError, match=r"^sweep file nope: no such file.*fmnist_demo"):
        load_sweep("nope")


def test_a_sweep_base_beside_the_sweep_file(tmp_path, monkeypatch):
    """A user's sweep file may name its preset relative to itself (here: outside any cwd)."""
    from mpcl.launch.sweep_spec import load_sweep

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "base.yaml").write_text("method:\n  name: simclr\nmodel:\n  backbone: small_cnn\n")
    (tmp_path / "mine" / "s.yaml").write_text("base: base.yaml\nspace:\n  method.temperature: {type: loguniform, "
                                              "low: 0.1, high: 0.5}\n")
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(tmp_path / "mine" / "s.yaml")
    assert Path(spec.base) == tmp_path / "mine" / "base.yaml"


def test_a_users_preset_starts_from_a_shipped_one_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("base: cifar10_simclr\noptim:\n  lr: 0.123\n")
    cfg, shipped = load(str(tmp_path / "mine.yaml")), load("cifar10_simclr")
    assert cfg.optim.lr == 0.123 and cfg.data.dataset == "cifar10" and cfg.method == shipped.method
    (tmp_path / "bad.yaml").write_text("base: cifar10_simclr_typo\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: base \S*cifar10_simclr_typo: no such file"):
        load(str(tmp_path / "bad.yaml"))
