"""A method added the way the README's "Adding a method" says: one module (its parameters, the
method, ``register``) and one preset part, from outside the package."""

import dataclasses
import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from mpcl import cli
from tests.helpers.runs import tiny_overrides
from mpcl.config import ConfigError
from mpcl.config.compose import load
from mpcl.data.batch import Batch
from mpcl.methods import METHODS, Method, build_method, register

TOY = '''
"""Toy: the two views' normalised projections pulled together, times ``scale``."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mpcl.config import MethodParams, knob
from mpcl.methods import Method, SSLOutput, register


@dataclass
class ToyParams(MethodParams):
    scale: float = knob(1.0, gt=0.0, le=10.0)     # multiplies the whole loss


class Toy(Method):
    Params = ToyParams
    loss_metrics = ("train/unscaled",)

    def __init__(self, params: ToyParams, cfg, num_classes: int, num_samples: int):
        super().__init__(params, cfg, num_classes, num_samples)
        self.projector = nn.Linear(self.feature_dim, cfg.model.projector_out)

    def ssl_loss(self, batch, epoch):
        n = batch.index.shape[0]
        h = self.backbone(torch.cat(batch.views[:2]))
        z = F.normalize(self.projector(h).float(), dim=1)
        unscaled = (2 - 2 * (z[:n] * z[n:]).sum(1)).mean()
        return SSLOutput(self.params.scale * unscaled, h, {"train/unscaled": unscaled.detach()})


register("toy", Toy)
'''

ROOT = Path(__file__).resolve().parents[1]

# configs/parts/method/toy.yaml: the method's section and its recipe
PART = {"method": {"name": "toy", "scale": 3.0}, "optim": {"name": "sgd", "lr": 0.05, "warmup_epochs": 0}}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy module imported from a folder outside the package, and its preset part."""
    (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY))
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(PART, sort_keys=False))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_method")
    yield module, tmp_path / "toy.yaml"
    METHODS.pop("toy", None)
    sys.modules.pop("toy_method", None)


def test_a_registered_method_loads_with_its_own_knobs(toy):
    module, part = toy
    cfg = load(part, ["model.backbone=small_cnn", "model.projector_out=8"])
    assert isinstance(cfg.method, module.ToyParams) and cfg.method.scale == 3.0
    with pytest.raises(ConfigError, match=r"^method.scale=11.0: must satisfy 0.0 < value <= 10.0$"):
        load(part, ["method.scale=11"])
    with pytest.raises(ConfigError, match=r"^method.temperature: not a parameter of method 'toy' \(it has: scale\)$"):
        load(part, ["method.temperature=0.2"])
    with pytest.raises(ValueError, match="'toy' is Toy already"):
        register("toy", type("Other", (module.Toy,), {}))
    method = build_method(cfg, 10, 16)
    g = torch.Generator().manual_seed(0)
    batch = Batch([torch.rand(4, 3, 28, 28, generator=g) for _ in range(2)], torch.arange(4), torch.arange(4))
    out = method.training_step(batch, 0)
    assert out.metrics["train/loss"].item() == pytest.approx(3.0 * out.metrics["train/unscaled"].item())


@pytest.mark.slow
def test_a_registered_method_trains_through_the_cli(toy, tmp_path, fmnist_path):
    _, part = toy
    preset = tmp_path / "fmnist_toy.yaml"     # what configs/fmnist_toy.yaml would be: the two parts
    preset.write_text(f"base: [{ROOT}/configs/parts/data/fmnist.yaml, {part.name}]\ntrain: {{epochs: 1}}\n")
    out = tmp_path / "run"
    cli.main(["train", "--config", str(preset), "--no-ray", *tiny_overrides(
        out, "toy", **{"data.path": fmnist_path, "data.subset": 64, "data.val_subset": 64, "data.batch_size": 32})])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0] and "val/knn_top1" in rows[0]
    assert rows[0]["train/loss"] == pytest.approx(3.0 * rows[0]["train/unscaled"], rel=1e-5)  # the knob reached it
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == {"name": "toy", "scale": 3.0}


def test_the_registry_names_what_is_wrong():
    from mpcl.methods.registry import method_class

    with pytest.raises(TypeError, match=r"^register\('x', <class 'int'>\): not a Method subclass$"):
        register("x", int)
    with pytest.raises(TypeError, match="not a Method subclass"):
        register("x", len)

    @dataclasses.dataclass
    class Knobs:                                 # a dataclass, but not a MethodParams
        scale: float = 1.0

    stray = type("Stray", (Method,), {"Params": Knobs})
    with pytest.raises(TypeError, match=r"^register\('x', Stray\): Stray.Params must be a dataclass subclass "
                                        r"of mpcl.config.MethodParams$"):
        register("x", stray)
    assert "x" not in METHODS
    with pytest.raises(ConfigError, match=r"^method.name='nope': unknown; allowed: barlow_twins, mcl, moco, "):
        method_class("nope")
    cfg = load(None, ["method.name=simclr", "model.backbone=small_cnn"])
    with pytest.raises(ConfigError, match=r"^method.name='moco': its parameters are MoCoParams, "
                                          r"got TemperatureParams$"):
        build_method(dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name="moco")), 10, 16)
