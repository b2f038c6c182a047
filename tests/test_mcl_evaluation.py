"""MCL's per-network side: the networks' momentum encoders, which network evaluation uses,
every network's validation metrics (kNN, classifier top-1, ensemble) and the metric names.

Tiny models (small CNN, or a pooled linear backbone where the classifiers' predictions must
differ from sample to sample) and in-memory loaders: ``loaders.val`` and
``loaders.train_eval`` are lists of (images, labels) batches, as ``metrics.extract`` reads them.
"""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mpcl import metrics as ev
from mpcl.config.compose import load
from mpcl.data.batch import Batch
from mpcl.methods import build_method

CLASSES, KNN_K, KNN_T = 4, 4, 0.5   # k and T where the votes differ from the defaults (20, 0.07)


def _mcl(**extra):
    over = {"method.name": "mcl", "model.backbone": "small_cnn", "data.batch_size": 4,
            "model.projector_hidden": 16, "model.projector_out": 8, "method.queue_size": 8, "method.embed_dim": 8,
            "train.knn_k": KNN_K, "train.knn_temperature": KNN_T, "out": "/tmp/unused", **extra}
    cfg = load(None, [f"{k}={v}" for k, v in over.items()])
    torch.manual_seed(0)
    return cfg, build_method(cfg, CLASSES, 100)


def _signed_backbones(method):
    """Pooled linear backbones (signed features, so each network's predictions vary), one per network."""
    torch.manual_seed(6)
    method.backbone = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, method.feature_dim))
    for k in range(len(method.more_backbones)):
        method.more_backbones[k] = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                                 nn.Linear(12, method.feature_dim))
    return method.eval()


def _split(n: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g) - 0.5
    y = torch.randint(CLASSES, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _loaders():
    return SimpleNamespace(train_eval=_split(30, 8, 1), val=_split(20, 6, 2))


def _cat(split):
    return torch.cat([x for x, _ in split]), torch.cat([y for _, y in split])


def _top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == y).double().mean())


@pytest.mark.parametrize("schedule, step, momentum", [
    ("constant", 3, 0.9),
    ("cosine", 2, 1 - 0.1 * (math.cos(math.pi * 3 / 10) + 1) / 2),   # base 0.9 at step 2 of 10
])
def test_every_network_key_encoder_is_an_ema_of_its_own_query_encoder(schedule, step, momentum):
    _, m = _mcl(**{"method.num_networks": 3, "method.momentum": 0.9, "method.momentum_schedule": schedule})
    nets = m.backbones()
    assert len(nets) == 3 and len({id(b) for b in nets}) == 3
    first = [next(b.parameters()) for b in nets]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])   # initialised apart
    keys_before = [[p.detach().clone() for p in k.parameters()] for k in m.key_encoders]
    with torch.no_grad():
        for i, b in enumerate(nets):   # each query encoder moves its own way
            for p in [*b.parameters(), *m.projectors[i].parameters()]:
                p.add_(torch.randn_like(p))
    m.after_optimizer_step(step, 10)
    for i, b in enumerate(nets):
        online = [*b.parameters(), *m.projectors[i].parameters()]
        key = list(m.key_encoders[i].parameters())
        assert len(key) == len(online) == len(keys_before[i])
        for k0, k, q in zip(keys_before[i], key, online):
            torch.testing.assert_close(k, momentum * k0 + (1 - momentum) * q.detach())


@pytest.mark.parametrize("mode", ["unsupervised", "supervised"])
def test_forward_and_embed_use_the_eval_network(mode):
    _, m = _mcl(**{"method.mode": mode, "method.num_networks": 3, "method.eval_network": 2})
    m.eval()
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        h = m.backbones()[2](x)
        assert torch.equal(m(x), h) and not torch.equal(m(x), m.backbones()[0](x))
        heads = m.projectors if mode == "unsupervised" else m.embedders
        assert torch.equal(m.embed(h), heads[2](h))


def test_unsupervised_without_report_networks_adds_no_metrics():
    _, m = _mcl()
    assert m.extra_metrics(_loaders(), contextlib.nullcontext) == {}


@pytest.mark.parametrize("mode", ["unsupervised", "supervised"])
def test_report_networks_gives_every_network_knn_top1(mode):
    _, m = _mcl(**{"method.mode": mode, "method.num_networks": 3, "method.report_networks": True})
    m = _signed_backbones(m)
    loaders = _loaders()
    got = m.extra_metrics(loaders, contextlib.nullcontext)
    (train_x, train_y), (val_x, val_y) = _cat(loaders.train_eval), _cat(loaders.val)
    want = {}
    with torch.no_grad():
        for i, b in enumerate(m.backbones()):
            want[f"val/knn_top1_net{i}"] = ev.knn_top1(b(train_x), train_y, b(val_x), val_y, CLASSES, KNN_K, KNN_T)
    assert len(set(want.values())) > 1                           # the networks differ
    assert {k: v for k, v in got.items() if "knn" in k} == pytest.approx(want)
    assert ("val/ensemble_top1" in got) == (mode == "supervised")


def test_supervised_reports_every_classifier_and_their_ensemble():
    """``val/net{i}_top1``: network i's classifier on its features; ``val/ensemble_top1``: the
    argmax of the summed logits (the reference's ensemble); no kNN keys without report_networks."""
    _, m = _mcl(**{"method.mode": "supervised", "method.num_networks": 3})
    m = _signed_backbones(m)
    loaders = _loaders()
    got = m.extra_metrics(loaders, contextlib.nullcontext)
    val_x, val_y = _cat(loaders.val)
    with torch.no_grad():
        logits = [c(b(val_x)) for b, c in zip(m.backbones(), m.classifiers)]
    want = {f"val/net{i}_top1": _top1(lg, val_y) for i, lg in enumerate(logits)}
    want["val/ensemble_top1"] = _top1(logits[0] + logits[1] + logits[2], val_y)
    assert len(set(want.values())) == len(want) and min(want.values()) > 0   # every value tells them apart
    assert got == pytest.approx(want)


def _labelled_batch(n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(4)
    return Batch([torch.rand(n, 3, 8, 8, generator=g) for _ in range(2)], torch.arange(n),
                 torch.arange(n) % CLASSES)    # two of each class: every anchor has a positive


@pytest.mark.parametrize("mode", ["unsupervised", "supervised"])
@pytest.mark.parametrize("report", [False, True])
def test_metric_names_are_exactly_what_a_step_and_the_evaluation_report(mode, report):
    cfg, m = _mcl(**{"method.mode": mode, "method.num_networks": 3, "method.report_networks": report})
    step = m.training_step(_labelled_batch(), 0)
    extra = m.eval().extra_metrics(_loaders(), contextlib.nullcontext)
    names = type(m).metric_names(cfg)
    assert len(names) == len(set(names))
    assert set(names) == {*step.metrics, *extra}
