"""What every method gets from ``Method`` and the registry: the metrics it declares, the
online probe on detached features, the backbone the config describes, which views a two-view
method reads, and the buffers it keeps consistent across workers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mpcl.config.compose import declared_only, load
from mpcl.data.batch import Batch
from mpcl.methods import METHODS, build_method

N, CLASSES, SAMPLES = 6, 10, 40


def _config(name: str, **extra):
    over = {"method.name": name, "model.backbone": "small_cnn", "data.batch_size": N,
            "model.projector_hidden": 16, "model.projector_out": 8, "model.predictor_hidden": 4,
            "method.queue_size": 4 * N, "data.loader": "torch", "out": "/tmp/unused", **extra}
    return load(None, declared_only(name, over))


def _method(name: str, **extra):
    torch.manual_seed(0)
    return build_method(_config(name, **extra), CLASSES, SAMPLES)


def _batch(views: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch([torch.rand(N, 3, 32, 32, generator=g) for _ in range(views)],
                 torch.tensor([17, 3, 29, 8, 0, 35]), torch.tensor([1, 4, 1, 7, 4, 1]))


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"spcl"}))   # SPCL's terms start with its clustering
def test_a_training_step_reports_exactly_the_declared_training_metrics(name):
    cfg = _config(name)
    out = build_method(cfg, CLASSES, SAMPLES).training_step(_batch(), 0)
    declared = METHODS[name].metric_names(cfg)
    assert {"train/loss", "train/probe_loss", "train/probe_top1"} <= set(declared)
    assert set(out.metrics) == {k for k in declared if k.startswith("train/")}


def test_the_online_probe_is_a_linear_classifier_on_the_features_of_both_views():
    """Probe loss: cross-entropy of probe(h) with each view's row labelled by its sample;
    top-1 in percent; the step's loss is the method's plus the probe's."""
    method, batch = _method("simclr").eval(), _batch()
    with torch.no_grad():
        ssl = method.ssl_loss(batch, 0)
        h = ssl.features - ssl.features.mean(0)      # a probe pointing at view 1 of each class's last sample
        last = {int(y): i for i, y in enumerate(batch.label)}
        method.probe.weight.copy_(3e3 * torch.stack([h[last.get(c, 0)] for c in range(CLASSES)]))
        out = method.training_step(batch, 0)
    logits = method.probe(ssl.features).double().tolist()
    labels = batch.label.repeat(2).tolist()
    ce = sum(math.log(sum(math.exp(x) for x in row)) - row[y] for row, y in zip(logits, labels)) / len(labels)
    right = sum(row.index(max(row)) == y for row, y in zip(logits, labels))
    assert right > 0 and 2 * right != len(labels)    # neither none nor half right
    assert out.metrics["train/probe_top1"].item() == pytest.approx(100 * right / len(labels))
    assert out.metrics["train/probe_loss"].item() == pytest.approx(ce, rel=1e-5)
    assert out.metrics["train/loss"].item() == pytest.approx(ssl.loss.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(ssl.loss.item() + ce, rel=1e-5)


@pytest.mark.parametrize("cifar_stem, zero_init_residual", [(True, False), (False, True)])
def test_the_backbone_is_the_resnet_the_model_section_describes(cifar_stem, zero_init_residual):
    method = _method("simclr", **{"model.backbone": "resnet18", "model.cifar_stem": cifar_stem,
                                  "model.zero_init_residual": zero_init_residual})
    net = method.backbone
    assert net.conv1.kernel_size == ((3, 3) if cifar_stem else (7, 7))
    assert isinstance(net.maxpool, nn.Identity) == cifar_stem
    last_bn = [block.bn2.weight for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for block in layer]
    assert all(bool((w == 0).all()) == zero_init_residual for w in last_bn)


@pytest.mark.parametrize("name", ["simsiam", "moco", "barlow_twins"])
def test_a_two_view_method_reads_the_first_two_views_only(name):
    """A method without multi-crop support gives the same step whatever follows the two views."""
    method = _method(name).eval()
    two, three = _batch(), _batch()
    three.views.append(torch.rand(N, 3, 32, 32))
    state = {k: v.clone() for k, v in method.state_dict().items()}
    want = method.ssl_loss(two, 0)
    method.load_state_dict(state)          # the same queue for MoCo
    got = method.ssl_loss(three, 0)
    assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-6)
    assert torch.equal(got.features, want.features)


def test_the_key_encoder_is_left_out_of_the_optimizer():
    method = _method("moco")
    optimized = {id(p) for g in method.param_groups() for p in g["params"]}
    assert not any(p.requires_grad for p in method.key_encoder.parameters())
    assert optimized.isdisjoint(map(id, method.key_encoder.parameters()))
    assert optimized == {id(p) for n, p in method.named_parameters() if not n.startswith("key_encoder.")}


class _Counter(nn.Module):
    consistent_across_workers = True

    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(()))
        self.norm = nn.BatchNorm1d(2)         # a child that does not set the flag


def test_worker_consistent_buffers_are_the_flagged_modules_own_buffers():
    """A module that sets ``consistent_across_workers`` vouches for its own buffers, not for
    its children's; a flagged method's own buffers go by their bare names."""
    method = _method("simclr")
    method.counter = _Counter()
    assert method.worker_consistent_buffers() == ["counter.count"]
    method.consistent_across_workers = True
    method.register_buffer("seen", torch.zeros(()))
    assert set(method.worker_consistent_buffers()) == {"seen", "counter.count"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_knows_the_size_of_its_training_split(name):
    """``num_samples`` reaches ``Method`` through every subclass (SPCL's clustering and any
    method built on another read it there)."""
    assert _method(name).num_samples == SAMPLES
