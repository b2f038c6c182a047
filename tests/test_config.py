"""Config: layering, types, and validation errors (exit 2, one line naming the key)."""

import subprocess
import sys
from pathlib import Path

import pytest

import run
from mpcl.config import ConfigError, dump, load

ROOT = Path(__file__).resolve().parents[1]


def test_preset_then_overrides(tmp_path):
    cfg = load(ROOT / "configs/fmnist_simclr_attn.yaml",
               ["method.temperature=0.2", "train.epochs=1", "data.subset=2048", f"out={tmp_path}"])
    assert cfg.method.name == "simclr_attn" and cfg.method.temperature == 0.2
    assert cfg.train.epochs == 1 and cfg.data.subset == 2048 and cfg.out == str(tmp_path)
    assert cfg.optim.name == "lars"                       # from the preset
    assert isinstance(load(None, ["method.temperature=1"]).method.temperature, float)  # int -> float


def test_every_preset_is_valid():
    presets = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(presets) >= 8
    for p in presets:
        cfg = load(p)
        dataset, method = p.stem.split("_", 1)
        assert cfg.method.name == method, p.name


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load(ROOT / "configs/cifar10_simsiam_multi.yaml", ["method.bank_mix=0.25"])
    dump(cfg, tmp_path / "c.yaml")
    assert load(tmp_path / "c.yaml") == cfg


BAD = [
    ("method.temperature=0", "method.temperature"),
    ("method.temperature=-0.5", "method.temperature"),
    ("method.attention_weight=1.5", "method.attention_weight"),
    ("method.attention_weight=-0.1", "method.attention_weight"),
    ("method.bank_mix=2", "method.bank_mix"),
    ("method.attention_target=both", "method.attention_target"),
    ("method.classifier_outputs=labels", "method.classifier_outputs"),
    ("method.pseudo_label_order=random", "method.pseudo_label_order"),
    ("method.pair_labels=ground_truth", "method.pair_labels"),
    ("method.name=byol", "method.name"),
    ("model.backbone=vgg", "model.backbone"),
    ("data.dataset=mnist", "data.dataset"),
    ("train.epochs=two", "train.epochs"),
    ("data.subset=1.5", "data.subset"),
    ("model.cifar_stem=3", "model.cifar_stem"),
    ("method.temprature=0.2", "method.temprature"),
    ("methods.temperature=0.2", "methods.temperature"),
]


@pytest.mark.parametrize("override,key", BAD)
def test_bad_value_exits_2_naming_the_key(override, key, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        run.main(["train", "--no-ray", override, f"out={tmp_path / 'r'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err
    assert not (tmp_path / "r").exists()           # nothing was started


def test_error_names_the_value_and_what_is_allowed():
    with pytest.raises(ConfigError, match=r"method.name='byol'.*simclr.*simsiam_multi"):
        load(None, ["method.name=byol"])
    with pytest.raises(ConfigError, match=r"method.bank_mix=2.0: must satisfy 0.0 <= value <= 1.0"):
        load(None, ["method.bank_mix=2"])


def test_cli_subprocess_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "train", "--no-ray", "method.temperature=0",
                           f"out={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: method.temperature=0.0: must be > 0.0"]


def test_missing_config_file(capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["train", "--no-ray", "--config", "configs/nope.yaml"])
    assert e.value.code == 2 and "configs/nope.yaml" in capsys.readouterr().err
