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


NON_FINITE = ["optim.lr=nan", "method.temperature=inf", "data.crop_scale_min=nan", "train.knn_temperature=nan",
              "optim.trust_coefficient=.nan", "scale.gpus_per_worker=-inf", "method.kd_temperature=.inf"]


@pytest.mark.parametrize("override", NON_FINITE)
def test_nan_and_inf_are_refused_naming_the_key(override, capsys, tmp_path):
    key = override.split("=")[0]
    with pytest.raises(SystemExit) as e:
        run.main(["train", "--no-ray", override, f"out={tmp_path / 'r'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and "finite" in err
    assert not (tmp_path / "r").exists()


def test_every_float_key_refuses_nan():
    from mpcl.config import FLOAT_KEYS

    assert "optim.lr" in FLOAT_KEYS and "scale.gpus_per_worker" in FLOAT_KEYS and "train.epochs" not in FLOAT_KEYS
    for key in FLOAT_KEYS:
        with pytest.raises(ConfigError, match=f"^{key}=nan: must be a finite number$"):
            load(None, {key: float("nan")})


@pytest.mark.parametrize("text,expect", [
    ("", "empty file"),
    ("# only a comment\n", "empty file"),
    ("method:\n  name: simclr\n  temperature: 0.2\n  temperature: 0.3\n",
     "duplicate key 'method.temperature' (lines 3 and 4)"),
    ("method: {name: simclr}\nmethod: {temperature: 0.3}\n", "duplicate key 'method' (lines 1 and 2)"),
])
def test_empty_or_duplicate_yaml_is_one_line(text, expect, tmp_path, capsys):
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as e:
        run.main(["train", "--no-ray", "--config", str(path), f"out={tmp_path / 'r'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"error: {path}: {expect}"] or (len(err.splitlines()) == 1 and expect in err
                                                                 and str(path) in err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv", [
    ["--config", "c.yaml", "a.b=1", "--no-ray", "c.d=2"],
    ["a.b=1", "--config", "c.yaml", "c.d=2", "--no-ray"],
    ["--no-ray", "a.b=1", "c.d=2", "--config", "c.yaml"],
])
def test_train_options_and_overrides_in_any_order(argv, monkeypatch):
    seen = {}
    monkeypatch.setattr(run, "cmd_train", lambda args: seen.update(vars(args)))
    run.main(["train", *argv])
    assert seen["overrides"] == ["a.b=1", "c.d=2"] and seen["no_ray"] and seen["config"] == "c.yaml"
    assert seen["command"] == "train"


def test_an_override_after_an_option_is_applied(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["train", "--config", "configs/fmnist_simclr.yaml", "train.epochs=1", "--no-ray",
                  "method.temperature=0", f"out={tmp_path / 'r'}"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: method.temperature=0.0: must be > 0.0"


def test_eval_options_and_overrides_in_any_order(monkeypatch):
    seen = {}
    monkeypatch.setattr(run, "cmd_eval", lambda args: seen.update(vars(args)))
    run.main(["eval", "data.path=/x", "--checkpoint", "last.pt", "data.subset=5", "--linear-epochs", "3"])
    assert seen["overrides"] == ["data.path=/x", "data.subset=5"] and seen["checkpoint"] == "last.pt"
    assert seen["linear_epochs"] == 3
