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


def test_every_shipped_preset_composes_its_dataset_and_method_parts():
    presets = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(presets) >= 30
    for p in presets:
        dataset, method = p.stem.split("_", 1)
        tree = yaml.safe_load(p.read_text())
        assert tree["base"] == [f"parts/data/{dataset}.yaml", f"parts/method/{method}.yaml"], p.name
        assert load(p).method.name == method
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
