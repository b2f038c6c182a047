"""Presets compose: ``base:`` files merged in order, relative to the preset, the preset's own
keys last; every shipped preset is its dataset part plus its method part plus a few lines."""

from pathlib import Path

import pytest
import yaml

from mpcl.config import ConfigError
from mpcl.config.compose import load
from mpcl.config.presets import read_preset

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bases_merge_in_order_and_the_preset_wins(tmp_path):
    _write(tmp_path / "parts/a.yaml", "data: {batch_size: 64, subset: 10}\noptim: {lr: 0.1}\n")
    _write(tmp_path / "parts/b.yaml", "base: a.yaml\ndata: {batch_size: 128}\ntrain: {epochs: 3}\n")
    _write(tmp_path / "parts/c.yaml", "optim: {lr: 0.2, name: lars}\n")
    top = _write(tmp_path / "run.yaml", "base: [parts/b.yaml, parts/c.yaml]\ntrain: {epochs: 5}\n")
    assert read_preset(top) == {"data": {"batch_size": 128, "subset": 10}, "optim": {"lr": 0.2, "name": "lars"},
                                "train": {"epochs": 5}}
    cfg = load(top, ["data.subset=7"])                  # overrides still come last
    assert (cfg.data.batch_size, cfg.data.subset, cfg.optim.lr, cfg.train.epochs) == (128, 7, 0.2, 5)


@pytest.mark.parametrize("text,needle", [
    ("base: missing.yaml\n", "missing.yaml: no such file"),
    ("base: [3]\n", "base=[3]: expected a preset path or a list of them"),
    ("base: {a: 1}\n", "expected a preset path or a list of them"),
    ("base: loop.yaml\n", "base files include each other"),
])
def test_bad_bases_are_one_line_naming_the_file(tmp_path, text, needle):
    path = _write(tmp_path / "loop.yaml", text)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert str(path.name) in str(e.value)


def test_a_cycle_through_two_files_is_named(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    path = _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        read_preset(tmp_path / "a.yaml")
    assert path.is_file()


def test_every_shipped_preset_composes_its_dataset_and_method_parts(small_folder):
    presets = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(presets) >= 30
    for p in presets:
        dataset, method = p.stem.split("_", 1)
        tree = yaml.safe_load(p.read_text())
        assert tree["base"] == [f"parts/data/{dataset}.yaml", f"parts/method/{method}.yaml"], p.name
        assert load(p, {"data.path": small_folder} if dataset == "folder" else None).method.name == method
    # the paper's pair differs only where the methods differ: SimCLR-Attn is SimCLR plus attention
    plain, attn = (read_preset(ROOT / f"configs/cifar10_{m}.yaml") for m in ("simclr", "simclr_attn"))
    assert {k: v for k, v in attn["method"].items() if not k.startswith("attention")} == \
        {**plain["method"], "name": "simclr_attn"}
    assert {s: attn[s] for s in attn if s not in ("method", "out")} == \
        {s: plain[s] for s in plain if s not in ("method", "out")}


def test_a_recipe_change_in_a_part_reaches_every_preset_built_on_it(tmp_path):
    import shutil

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    part = tmp_path / "configs/parts/method/simclr.yaml"
    part.write_text(part.read_text().replace("crop_scale_min: 0.08", "crop_scale_min: 0.3"))
    for name in ("cifar10_simclr", "cifar10_simclr_attn", "fmnist_simclr_attn_multi"):
        assert load(tmp_path / f"configs/{name}.yaml").data.crop_scale_min == 0.3, name


# reproduce's smoke budget as a dict of overrides, before it became configs/parts/budget/smoke.yaml
OLD_SMOKE = {"model.backbone": "small_cnn", "model.projector_hidden": 256, "model.projector_out": 128,
             "model.predictor_hidden": 64, "data.loader": "torch", "data.num_workers": 0, "data.subset": 2048,
             "data.val_subset": 1000, "data.batch_size": 256, "train.epochs": 2, "tracking.wandb": "disabled",
             "scale.cpus_per_worker": 1, "scale.use_gpu": "false", "train.progress": "false"}


@pytest.mark.parametrize("preset", ["fmnist_simclr", "cifar10_simsiam_multi"])
def test_a_part_over_a_preset_is_the_preset_with_the_parts_overrides(preset):
    from mpcl import cli

    old = load(preset, OLD_SMOKE)
    assert load([preset, "parts/budget/smoke"]) == old
    assert load([f"configs/{preset}.yaml", "configs/parts/budget/smoke.yaml"]) == old
    args = cli.build_parser().parse_args(["train", "--config", preset, "--config", "parts/budget/smoke",
                                          "data.subset=64"])
    assert args.config == [preset, "parts/budget/smoke"]
    assert cli.load_config(args.config, args.overrides) == load(preset, {**OLD_SMOKE, "data.subset": 64})
    # later files override earlier ones: the preset after the part takes its own values back
    assert load(["parts/budget/smoke", preset]).model.backbone == load(preset).model.backbone == "resnet18"


def test_a_missing_part_is_one_line_naming_it(capsys):
    from mpcl import cli

    with pytest.raises(ConfigError, match=r"^--config parts/budget/nope: no such file") as e:
        load(["fmnist_simclr", "parts/budget/nope"])
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--no-ray", "--config", "fmnist_simclr", "--config", "parts/budget/nope"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "parts/budget/nope" in err, err


# the tests' tiny runs as dicts of overrides, before they became configs/parts/budget/tiny.yaml
OLD_TINY = {"model.backbone": "small_cnn", "data.subset": 512, "data.val_subset": 256, "data.loader": "torch",
            "data.batch_size": 128, "train.epochs": 1, "optim.warmup_epochs": 0, "train.progress": "false",
            "model.projector_hidden": 128, "model.projector_out": 64, "model.predictor_hidden": 32}
OLD_TINY_SWEEP = {"model.backbone": "small_cnn", "model.projector_hidden": 64, "model.projector_out": 32,
                  "data.loader": "torch", "data.path": "/data", "data.subset": 96, "data.val_subset": 96,
                  "data.batch_size": 64, "data.num_workers": 0, "train.epochs": 3, "train.progress": "false",
                  "optim.name": "sgd", "optim.lr": 0.3, "optim.scale_lr": False, "optim.warmup_epochs": 0,
                  "tracking.wandb": "disabled"}


def test_the_tests_tiny_runs_are_the_tiny_part(tmp_path):
    from tests.helpers.runs import tiny_overrides, tiny_sweep_overrides

    old = load("fmnist_simsiam", {"method.name": "simsiam", **OLD_TINY, "out": str(tmp_path), "data.subset": 64})
    assert load("fmnist_simsiam", tiny_overrides(tmp_path, "simsiam", **{"data.subset": 64})) == old
    assert load(["fmnist_simsiam", "parts/budget/tiny"], {"out": str(tmp_path), "data.subset": 64}) == old
    # a sweep's tiny trials: the same keys as before, and the part's predictor width (no sweep of
    # the suite trains a predictor: simclr_attn, mcl)
    assert tiny_sweep_overrides("/data", subset=96, epochs=3) == {**OLD_TINY_SWEEP, "model.predictor_hidden": 32}
