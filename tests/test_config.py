"""Config: layering, types, and validation errors (exit 2, one line naming the key)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mpcl import cli
from mpcl.config import SECTIONS, field_types
from mpcl.config import ConfigError, dump, to_dict
from mpcl.config.compose import declared_only, from_dict, load
from mpcl.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


def test_preset_then_overrides(tmp_path):
    cfg = load(ROOT / "configs/fmnist_simclr_attn.yaml",
               ["method.temperature=0.2", "train.epochs=1", "data.subset=2048", f"out={tmp_path}"])
    assert cfg.method.name == "simclr_attn" and cfg.method.temperature == 0.2
    assert cfg.train.epochs == 1 and cfg.data.subset == 2048 and cfg.out == str(tmp_path)
    assert cfg.optim.name == "lars"                       # from the preset
    assert isinstance(load(None, ["method.temperature=1"]).method.temperature, float)  # int -> float


def test_every_preset_is_valid(small_folder):
    presets = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(presets) >= 8
    for p in presets:
        cfg = load(p, {"data.path": small_folder} if p.stem.startswith("folder_") else None)
        dataset, method = p.stem.split("_", 1)
        assert cfg.method.name == method, p.name


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load(ROOT / "configs/cifar10_simsiam_multi.yaml", ["method.bank_mix=0.25"])
    dump(cfg, tmp_path / "c.yaml")
    assert load(tmp_path / "c.yaml") == cfg


# (override, the key the one-line error names, the method it is given to)
BAD = [
    ("method.temperature=0", "method.temperature", "simclr"),
    ("method.temperature=-0.5", "method.temperature", "simclr"),
    ("method.attention_weight=1.5", "method.attention_weight", "simclr_attn"),
    ("method.attention_weight=-0.1", "method.attention_weight", "simclr_attn_multi"),
    ("method.bank_mix=2", "method.bank_mix", "simsiam_multi"),
    ("method.attention_target=both", "method.attention_target", "simclr_attn"),
    ("method.classifier_outputs=labels", "method.classifier_outputs", "spcl"),
    ("method.pseudo_label_order=random", "method.pseudo_label_order", "spcl"),
    ("method.pair_labels=ground_truth", "method.pair_labels", "spcl"),
    ("method.name=byol", "method.name", "simclr"),
    ("model.backbone=vgg", "model.backbone", "simclr"),
    ("data.dataset=mnist", "data.dataset", "simclr"),
    ("train.epochs=two", "train.epochs", "simclr"),
    ("data.subset=1.5", "data.subset", "simclr"),
    ("model.cifar_stem=3", "model.cifar_stem", "simclr"),
    ("method.temprature=0.2", "method.temprature", "simclr"),
    ("methods.temperature=0.2", "methods.temperature", "simclr"),
    ("method.bank_mix=0.3", "method.bank_mix", "simclr"),         # another method's knob
    ("method.queue_size=64", "method.queue_size", "mcl_nope"),    # an unknown method first
]


@pytest.mark.parametrize("override,key,method", BAD)
def test_bad_value_exits_2_naming_the_key(override, key, method, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--no-ray", f"method.name={method}", override, f"out={tmp_path / 'r'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and (key in err if method != "mcl_nope" else "mcl_nope" in err)
    assert not (tmp_path / "r").exists()           # nothing was started


def test_a_key_the_method_does_not_have_names_the_method_and_its_keys():
    with pytest.raises(ConfigError) as e:
        load(None, ["method.name=simclr", "method.bank_mix=0.3"])
    assert str(e.value) == "method.bank_mix: not a parameter of method 'simclr' (it has: temperature)"
    with pytest.raises(ConfigError, match=r"^method.temperature: not a parameter of method 'simsiam' \(it has: no "):
        load(ROOT / "configs/fmnist_simsiam.yaml", ["method.temperature=0.2"])
    # the method is resolved first, whatever the order of the keys: preset, then overrides
    cfg = load(ROOT / "configs/fmnist_simsiam.yaml", ["method.bank_mix=0.3", "method.name=simsiam_multi"])
    assert cfg.method.name == "simsiam_multi" and cfg.method.bank_mix == 0.3
    with pytest.raises(ConfigError, match=r"^method.attention_weight: not a parameter of method 'simclr'"):
        load(ROOT / "configs/fmnist_simclr_attn.yaml", ["method.name=simclr"])   # the preset's knobs


def test_a_config_lists_only_its_methods_keys(tmp_path):
    cfg = load(ROOT / "configs/fmnist_simclr_attn.yaml", [f"out={tmp_path}"])
    dump(cfg, tmp_path / "config.yaml")
    method = yaml.safe_load((tmp_path / "config.yaml").read_text())["method"]
    assert list(method) == ["name", "temperature", "attention_weight", "attention_temperature", "attention_target"]
    assert not {"alpha", "kmeans_iters", "bank_dtype", "bank_mix", "queue_size"} & set(method)


def test_a_stored_config_of_every_method_key_is_read_back(tmp_path):
    """config.yaml written before each method declared its keys lists all of them: from_dict
    (resume, eval, report) keeps the method's own and drops the rest; user input does not."""
    cfg = load(ROOT / "configs/fmnist_simclr_attn.yaml", ["method.attention_weight=0.3", f"out={tmp_path}"])
    old = to_dict(cfg)
    old["method"].update({"bank_mix": 0.5, "alpha": 0.1, "kmeans_iters": 20, "mode": "unsupervised"})
    assert from_dict(old) == cfg
    assert from_dict(old, ["method.temperature=0.3"]).method.temperature == 0.3
    with pytest.raises(ConfigError, match="^method.alpha: not a parameter of method 'simclr_attn'"):
        from_dict(old, ["method.alpha=0.2"])
    with pytest.raises(ConfigError, match="^data.nope: unknown key"):     # only method keys are dropped
        from_dict({**old, "data": {**old["data"], "nope": 1}})
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(ConfigError, match="^method.bank_mix: not a parameter"):  # a preset is user input
        load(tmp_path / "old.yaml")


def test_lambda_alias_and_mcl_rules():
    assert load(None, ["method.name=barlow_twins", "method.lambda=0.01"]).method.barlow_lambda == 0.01
    with pytest.raises(ConfigError, match="^method.eval_network=2: must be < method.num_networks=2$"):
        load(None, ["method.name=mcl", "method.eval_network=2"])


def test_declared_only_spreads_overrides_over_methods():
    over = {"method.bank_mix": 0.3, "method.attention_weight": 0.5, "train.epochs": 2, "method.bank_mx": 1}
    assert declared_only("simclr", over) == {"train.epochs": 2, "method.bank_mx": 1}
    assert declared_only("simclr_attn_multi", over) == over
    with pytest.raises(ConfigError, match="^method.bank_mx: not a parameter"):   # a typo stays an error
        load(None, {"method.name": "simsiam_multi", **declared_only("simsiam_multi", over)})


def test_error_names_the_value_and_what_is_allowed():
    with pytest.raises(ConfigError, match=r"method.name='byol'.*simclr.*simsiam_multi"):
        load(None, ["method.name=byol"])
    with pytest.raises(ConfigError, match=r"method.bank_mix=2.0: must satisfy 0.0 <= value <= 1.0"):
        load(None, ["method.name=simsiam_multi", "method.bank_mix=2"])


def test_cli_subprocess_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "train", "--no-ray", "method.temperature=0",
                           f"out={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: method.temperature=0.0: must be > 0.0"]


def test_missing_config_file(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--no-ray", "--config", "configs/nope.yaml"])
    assert e.value.code == 2 and "configs/nope.yaml" in capsys.readouterr().err


NON_FINITE = ["optim.lr=nan", "method.temperature=inf", "data.crop_scale_min=nan", "train.knn_temperature=nan",
              "optim.trust_coefficient=.nan", "scale.gpus_per_worker=-inf",
              "method.name=mcl method.kd_temperature=.inf"]


@pytest.mark.parametrize("override", NON_FINITE)
def test_nan_and_inf_are_refused_naming_the_key(override, capsys, tmp_path):
    key = override.split()[-1].split("=")[0]
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--no-ray", *override.split(), f"out={tmp_path / 'r'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and "finite" in err
    assert not (tmp_path / "r").exists()


def _float_keys(method: str) -> list[str]:
    """Every float-typed key of a config of ``method``, as ``section.key``."""
    cfg = load(None, {"method.name": method})
    return [f"{section}.{name}" for section in SECTIONS
            for name, typ in field_types(type(getattr(cfg, section))).items() if typ is float]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_float_key_refuses_nan(method):
    keys = _float_keys(method)
    assert "optim.lr" in keys and "scale.gpus_per_worker" in keys and "train.epochs" not in keys
    for key in keys:
        with pytest.raises(ConfigError, match=f"^{key}=nan: must be a finite number$"):
            load(None, {"method.name": method, key: float("nan")})


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
        cli.main(["train", "--no-ray", "--config", str(path), f"out={tmp_path / 'r'}"])
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
    monkeypatch.setattr(cli, "cmd_train", lambda args: seen.update(vars(args)))
    cli.main(["train", *argv])
    assert seen["overrides"] == ["a.b=1", "c.d=2"] and seen["no_ray"] and seen["config"] == ["c.yaml"]
    assert seen["command"] == "train"


def test_an_override_after_an_option_is_applied(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--config", "configs/fmnist_simclr.yaml", "train.epochs=1", "--no-ray",
                  "method.temperature=0", f"out={tmp_path / 'r'}"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: method.temperature=0.0: must be > 0.0"


def test_eval_options_and_overrides_in_any_order(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "cmd_eval", lambda args: seen.update(vars(args)))
    cli.main(["eval", "data.path=/x", "--checkpoint", "last.pt", "data.subset=5", "--linear-epochs", "3"])
    assert seen["overrides"] == ["data.path=/x", "data.subset=5"] and seen["checkpoint"] == "last.pt"
    assert seen["linear_epochs"] == 3


def test_the_schema_and_the_methods_import_no_loader():
    """Layers: the schema imports nothing else of mpcl; the methods import the schema, not the loader
    that composes a Config (mpcl.config.compose, above them)."""
    code = ("import sys, mpcl.config; schema = {m for m in sys.modules if m.startswith('mpcl.')}; "
            "import mpcl.methods; print(sorted(schema), 'mpcl.config.compose' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.stdout.split() == ["['mpcl.config',", "'mpcl.config.schema']", "False"], proc.stderr
