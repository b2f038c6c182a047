"""Evaluation and optimisation against answers worked out by hand: weighted kNN, alignment
and uniformity, the linear probe, the learning-rate schedule (and the ``lr`` column the
engine logs), one LARS step, ``scale_lr`` and the fixed-lr parameter groups."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mpcl import metrics as ev
from mpcl.config.compose import load
from mpcl.engine.local import LocalReporter
from mpcl.engine.loop import fit
from mpcl.engine.optim import LARS, base_lr, build_optimizer, lr_factor, set_lr
from mpcl.methods import build_method
from tests.helpers.runs import tiny_overrides


def _at(*degrees: float, norm: float = 1.0) -> torch.Tensor:
    return torch.tensor([[norm * math.cos(math.radians(d)), norm * math.sin(math.radians(d))] for d in degrees])


# -- kNN --------------------------------------------------------------------------------------

def test_weighted_knn_hand_worked_across_a_chunk_boundary():
    """k=3, T=0.1; votes exp(cos / T). Training points (angle, class), two of them longer
    vectors (kNN compares directions):
      around 0 deg:   8 (0), +-36.87 (1, length 2)   cos .990, .8, .8
      around 180 deg: 175 (0), 170 (2), 190 (2)      cos .996, .985, .985
      around 90 deg:  90 (1), 60 (1), 120 (0)        cos 1, .866, .866
    Test points (angle, label), chunks of 2: [0 (0), 180 (2)] | [90 (1), 90 (0)]
      0:   class 0 e^9.90 = 19930  >  class 1 2 e^8 = 5962            -> 0, right
      180: class 2 2 e^9.85 = 37916 >  class 0 e^9.96 = 21130           -> 2, right
      90:  class 1 e^10 + e^8.66 = 27786 > class 0 e^8.66 = 5760        -> 1, right, then wrong
    3 of 4: 75 %. An unweighted vote takes class 1 at 0 deg (two votes to one): 50 %."""
    train_f = torch.cat([_at(8), _at(36.87, -36.87, norm=2.0), _at(175, 170, 190), _at(90, 60, 120)])
    train_y = torch.tensor([0, 1, 1, 0, 2, 2, 1, 1, 0])
    test_f = _at(0, 180, 90, 90)
    test_y = torch.tensor([0, 2, 1, 0])
    assert ev.knn_top1(train_f, train_y, test_f, test_y, 3, k=3, temperature=0.1, chunk=2) == pytest.approx(75.0)
    assert ev.knn_top1(train_f, train_y, test_f, test_y, 3, k=3, temperature=0.1, chunk=1024) == pytest.approx(75.0)
    # k=1 is the nearest neighbour alone: 175 deg (class 0) wins at 180 deg -> 2 of 4
    assert ev.knn_top1(train_f, train_y, test_f, test_y, 3, k=1, temperature=0.1, chunk=2) == pytest.approx(50.0)
    # through SplitFeatures, and a temperature high enough to make the vote near unweighted
    split = ev.SplitFeatures(train_f, train_y, test_f, test_y)
    assert split.knn_top1(3, k=3, temperature=0.1) == pytest.approx(75.0)
    assert split.knn_top1(3, k=3, temperature=100.0) == pytest.approx(50.0)
    # the test points scaled: the same directions, the same answer
    assert ev.knn_top1(train_f, train_y, 5 * test_f, test_y, 3, k=3, temperature=0.1, chunk=3) == pytest.approx(75.0)


def test_split_features_extracts_each_split_with_the_model():
    """Train features from ``train_eval``, validation features from ``val``, each through the
    model (here: doubling) under the autocast given, in loader order."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    entered = []

    def autocast():
        entered.append(1)
        return nullcontext()

    double = torch.nn.Module()
    double.forward = lambda x: 2 * x
    train = [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])),
             (torch.tensor([[3.0, 3.0]]), torch.tensor([2]))]
    val = [(torch.tensor([[5.0, 0.0]]), torch.tensor([1]))]
    split = ev.split_features(double, SimpleNamespace(train_eval=train, val=val), autocast)
    assert split.train_f.tolist() == [[2.0, 0.0], [0.0, 2.0], [6.0, 6.0]] and split.train_y.tolist() == [0, 1, 2]
    assert split.val_f.tolist() == [[10.0, 0.0]] and split.val_y.tolist() == [1]
    assert len(entered) == 3                        # one autocast per batch


def _knn_reference(train_f, train_y, test_f, test_y, num_classes, k, T) -> float:
    tr = torch.nn.functional.normalize(train_f.double(), dim=1)
    te = torch.nn.functional.normalize(test_f.double(), dim=1)
    correct = 0
    for i in range(te.shape[0]):
        sims = [(float(te[i] @ tr[j]), j) for j in range(tr.shape[0])]
        votes = [0.0] * num_classes
        for s, j in sorted(sims, reverse=True)[:k]:
            votes[int(train_y[j])] += math.exp(s / T)
        correct += max(range(num_classes), key=votes.__getitem__) == int(test_y[i])
    return 100.0 * correct / te.shape[0]


def test_weighted_knn_matches_a_loop_over_many_chunks():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=g)
    train_y = torch.randint(4, (60,), generator=g)
    test_y = torch.randint(4, (23,), generator=g)
    train_f = centres[train_y] + 1.2 * torch.randn(60, 6, generator=g)
    test_f = centres[test_y] + 1.2 * torch.randn(23, 6, generator=g)
    want = _knn_reference(train_f, train_y, test_f, test_y, 4, 7, 0.2)
    assert 30 < want < 100                      # neither trivial nor hopeless
    assert ev.knn_top1(train_f, train_y, test_f, test_y, 4, k=7, temperature=0.2, chunk=5) == pytest.approx(want)
    # k larger than the training set: every training point votes
    assert ev.knn_top1(train_f[:5], train_y[:5], test_f, test_y, 4, k=20, temperature=0.2, chunk=4) == \
        pytest.approx(_knn_reference(train_f[:5], train_y[:5], test_f, test_y, 4, 5, 0.2))


# -- alignment, uniformity, the probes ------------------------------------------------------

def test_alignment_hand_worked():
    z1 = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    z2 = torch.tensor([[0.0, 5.0], [0.0, 1.0], [-1.0, -1.0]])
    # normalised: distances sqrt(2), 0, 2 -> squared 2, 0, 4 -> mean 2; alpha 1: (sqrt 2 + 0 + 2) / 3
    assert ev.alignment(z1, z2) == pytest.approx(2.0)
    assert ev.alignment(z1, z2, alpha=1.0) == pytest.approx((math.sqrt(2) + 2) / 3)


def test_uniformity_hand_worked():
    z = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, -7.0]])
    # the first three (max_samples=3) normalised: squared distances 4, 2, 2
    want = math.log((math.exp(-2 * 4) + 2 * math.exp(-2 * 2)) / 3)
    assert ev.uniformity(z, max_samples=3) == pytest.approx(want)
    # t=1, all four: squared distances 4, 2, 2, 2, 2, 4
    assert ev.uniformity(z, t=1.0) == pytest.approx(math.log((2 * math.exp(-4) + 4 * math.exp(-2)) / 6))


def test_linear_probe_separates_a_separable_toy_case():
    """Three classes apart along two small informative dimensions; a third, huge and useless
    dimension: only the standardised features make the probe work at lr 0.1."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [0.03, 0.0], [0.0, 0.03]])

    def split(n):
        y = torch.arange(n) % 3
        x = centres[y] + 0.002 * torch.randn(n, 2, generator=g)
        return torch.cat([x, 1000 * torch.randn(n, 1, generator=g)], 1), y

    train_f, train_y = split(90)
    test_f, test_y = split(30)
    assert ev.linear_probe(train_f, train_y, test_f, test_y, 3, epochs=30, batch_size=32) == 100.0
    # test labels rotated: every prediction is now wrong
    assert ev.linear_probe(train_f, train_y, test_f, (test_y + 1) % 3, 3, epochs=30, batch_size=32) == 0.0
    # not one step of training: the zero-initialised classifier predicts class 0 everywhere
    assert ev.linear_probe(train_f, train_y, test_f, test_y, 3, epochs=0) == pytest.approx(100 / 3, abs=0.01)


def _linear_classifier_reference(train_f, train_y, num_classes):
    """The recipe written out in float64: standardise with the training mean and std (+1e-6),
    zero init, 100 epochs of batches of 1024 in the order of randperm(seed 0), SGD with
    momentum 0.9 and weight decay 1e-4, lr 0.1 on a cosine over every step."""
    x = train_f.double()
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    b = torch.zeros(num_classes, dtype=torch.float64)
    buf_w, buf_b = torch.zeros_like(w), torch.zeros_like(b)
    per_epoch = math.ceil(x.shape[0] / 1024)
    gen, t = torch.Generator().manual_seed(0), 0
    for _ in range(100):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], 1024):
            idx = order[start:start + 1024]
            p = torch.softmax(x[idx] @ w.T + b, dim=1)
            p[torch.arange(len(idx)), train_y[idx]] -= 1.0
            grad_w, grad_b = p.T @ x[idx] / len(idx) + 1e-4 * w, p.sum(0) / len(idx) + 1e-4 * b
            buf_w, buf_b = 0.9 * buf_w + grad_w, 0.9 * buf_b + grad_b
            lr = 0.1 * 0.5 * (1 + math.cos(math.pi * t / (100 * per_epoch)))
            w, b, t = w - lr * buf_w, b - lr * buf_b, t + 1
    return lambda f: ((f.double() - mean) / std) @ w.T + b


def test_linear_classifier_is_the_recipe_step_by_step():
    """Overlapping classes (the answer depends on every step), 1,100 samples (two batches of
    1024, the second short) and one feature nearly constant (std 1e-5, where the +1e-6 in
    the standardisation shows)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(3, (1100,), generator=g)
    f = torch.randn(1100, 4, generator=g) + torch.tensor([[0.0, 0.0], [0.6, 0.0], [0.0, 0.6]])[y].repeat(1, 2)
    f[:, 3] = 1e-5 * torch.randn(1100, generator=g) + 3.0 * 1e-5 * y
    test = torch.randn(50, 4, generator=g)
    test[:, 3] = 1e-5 * torch.randn(50, generator=g)
    want = _linear_classifier_reference(f, y, 3)(test)
    predict = ev.linear_classifier(f, y, 3)
    with torch.no_grad():
        got = predict(test)
    assert got.double() == pytest.approx(want, rel=1e-3, abs=1e-4)
    assert want.abs().max() > 0.5                 # trained: far from the zero initialisation
    assert ev.linear_probe(f, y, test, want.argmax(1), 3) == 100.0


def test_probe_top1():
    probe = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        probe.weight.copy_(torch.eye(2))
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    assert ev.probe_top1(probe, feats, torch.tensor([0, 1, 1, 1])) == 75.0


# -- the learning-rate schedule ------------------------------------------------------------------

# total 10 steps, 2 of linear warm-up, then cosine from 1 to min_ratio 0.1 (and held there)
SCHEDULE = [0.5, 1.0, 1.0, 0.965746, 0.868198, 0.722208, 0.55, 0.377792, 0.231802, 0.134254, 0.1, 0.1]


def test_lr_factor_table_with_warmup_and_min_ratio():
    assert [round(lr_factor(s, 10, 2, 0.1), 6) for s in range(12)] == SCHEDULE
    # no warm-up, min 0: starts at 1 and reaches 0 at the end
    assert lr_factor(0, 10, 0) == 1.0
    assert lr_factor(5, 10, 0) == pytest.approx(0.5)
    assert lr_factor(9, 10, 0) == pytest.approx(0.024472, abs=1e-6)
    assert lr_factor(10, 10, 0) == pytest.approx(0.0, abs=1e-12)


def test_set_lr_schedules_all_but_the_fixed_groups():
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.4, "initial_lr": 0.4},
                           {"params": [b], "lr": 0.05, "initial_lr": 0.05, "fixed_lr": True},
                           {"params": [c], "lr": 0.2, "initial_lr": 0.2, "fixed_lr": False}], lr=0.4)
    assert set_lr(opt, 0.25) == pytest.approx(0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.05, 0.05])
    assert set_lr(opt, 0.5) == pytest.approx(0.2)          # from the initial lr, not compounded
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.05, 0.1])


def test_scale_lr():
    cfg = load(None, ["optim.lr=0.3", "data.batch_size=512", "optim.scale_lr=true"])
    assert base_lr(cfg) == pytest.approx(0.6)
    assert base_lr(load(None, ["optim.lr=0.3", "data.batch_size=128", "optim.scale_lr=true"])) == pytest.approx(0.15)
    assert base_lr(load(None, ["optim.lr=0.3", "data.batch_size=512", "optim.scale_lr=false"])) == 0.3


def test_the_logged_lr_is_the_schedule(tmp_path, fmnist_path):
    """128 samples in batches of 32: 4 steps an epoch, 12 in all, warm-up 1.5 epochs = 6
    steps, lr 0.2 * 32 / 256 = 0.025, min_lr 0.01 (ratio 0.4). The logged lr is the last
    step's: step 3 in warm-up (4/6), steps 7 and 11 at cosine progress 1/6 and 5/6."""
    cfg = load(None, tiny_overrides(tmp_path, "simclr", **{
        "data.path": fmnist_path, "data.subset": 128, "data.val_subset": 64, "data.batch_size": 32,
        "train.epochs": 3, "train.eval_every": 3, "optim.name": "sgd", "optim.lr": 0.2, "optim.scale_lr": True,
        "optim.warmup_epochs": 1.5, "optim.min_lr": 0.01}))
    fit(cfg, LocalReporter(cfg, echo=False))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    cosine = lambda p: 0.4 + 0.6 * 0.5 * (1 + math.cos(math.pi * p))   # noqa: E731
    want = [0.025 * 4 / 6, 0.025 * cosine(1 / 6), 0.025 * cosine(5 / 6)]
    assert [r["lr"] for r in rows] == pytest.approx(want, rel=1e-9)
    assert [r["step"] for r in rows] == [4, 8, 12]


# -- the optimiser ----------------------------------------------------------------------------

def test_one_and_two_lars_steps_by_hand():
    """lr 0.5, momentum 0.9, trust 0.02. w = (3, 4), g = (0.3, 0.4), weight decay 0.1:
    step 1: d = g + 0.1 w = (0.6, 0.8), |d| = 1, |w| = 5, trust 0.02 * 5 / 1 = 0.1,
            buf = (0.06, 0.08), w = (2.97, 3.96);
    step 2: d = (0.597, 0.796) = 0.995 (0.6, 0.8), |w| = 4.95, trust 0.02 * 4.95 / 0.995,
            trust * d = (0.0594, 0.0792), buf = 0.9 buf + that = (0.1134, 0.1512),
            w = (2.9133, 3.8844).
    A group without LARS (b, no weight decay) is plain SGD with momentum; a zero tensor
    (|w| = 0) keeps trust 1."""
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    z = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = LARS([{"params": [w], "weight_decay": 0.1, "lars": True},
                {"params": [b], "weight_decay": 0.0, "lars": False},
                {"params": [z], "weight_decay": 0.1, "lars": True}],
               lr=0.5, momentum=0.9, trust_coefficient=0.02)

    def step():
        w.grad = torch.tensor([0.3, 0.4], dtype=torch.float64)
        b.grad = torch.tensor([0.5, 0.5], dtype=torch.float64)
        z.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
        opt.step()

    step()
    assert opt.state[w]["momentum_buffer"].tolist() == pytest.approx([0.06, 0.08], abs=1e-7)
    assert w.tolist() == pytest.approx([2.97, 3.96], abs=1e-7)
    assert b.tolist() == pytest.approx([0.75, -2.25], abs=1e-12)
    assert z.tolist() == pytest.approx([-0.5, 0.5], abs=1e-12)
    step()
    assert opt.state[w]["momentum_buffer"].tolist() == pytest.approx([0.1134, 0.1512], abs=1e-7)
    assert w.tolist() == pytest.approx([2.9133, 3.8844], abs=1e-7)
    assert b.tolist() == pytest.approx([0.75 - 0.5 * 0.95, -2.25 - 0.5 * 0.95], abs=1e-12)


def _groups(method):
    return {g["name"]: g for g in method.param_groups()}


def test_simsiam_predictor_keeps_its_lr_and_bn_bias_get_no_decay():
    cfg = load(None, ["method.name=simsiam", "model.backbone=small_cnn", "model.projector_hidden=16",
                      "model.projector_out=8", "model.predictor_hidden=4", "optim.lr=0.1", "data.batch_size=512",
                      "optim.weight_decay=0.01", "optim.probe_lr=0.3"])
    method = build_method(cfg, 10, 100)
    groups = _groups(method)
    names = {id(p): n for n, p in method.named_parameters()}
    assert {names[id(p)] for p in groups["fixed_lr"]["params"]} == \
        {f"predictor.{n}" for n, _ in method.predictor.named_parameters()}
    assert all(p.ndim <= 1 for p in groups["no_decay"]["params"])
    assert all(p.ndim > 1 for p in groups["decay"]["params"])
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.01
    assert not groups["no_decay"]["lars"] and groups["decay"]["lars"]
    # the predictor's weights and biases decay and are LARS-adapted like the rest; the probe neither
    assert groups["fixed_lr"]["weight_decay"] == 0.01 and groups["fixed_lr"]["lars"]
    assert groups["probe"]["weight_decay"] == 0.0 and not groups["probe"]["lars"]
    opt = build_optimizer(cfg, method.param_groups())
    assert isinstance(opt, torch.optim.SGD) and not isinstance(opt, LARS)
    assert set_lr(opt, 0.5) == pytest.approx(0.1)          # 0.1 * 512 / 256 * 0.5
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"decay": 0.1, "no_decay": 0.1, "fixed_lr": 0.2, "probe": 0.3})
    decays = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decays == {"decay": 0.01, "no_decay": 0.0, "fixed_lr": 0.01, "probe": 0.0}
    every = [p for g in opt.param_groups for p in g["params"]]
    assert len(every) == len(set(map(id, every))) == len(list(method.parameters()))
    # without predictor_fixed_lr the predictor is scheduled like the rest
    free = build_method(load(None, ["method.name=simsiam", "model.backbone=small_cnn",
                                    "optim.predictor_fixed_lr=false"]), 10, 100)
    assert "fixed_lr" not in _groups(free)


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_groups_without_their_own_settings_take_the_config(name):
    cfg = load(None, ["optim.name=" + name, "optim.lr=0.3", "data.batch_size=512", "optim.scale_lr=true",
                      "optim.momentum=0.8", "optim.weight_decay=0.002"])
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer(cfg, [{"params": [a]}, {"params": [b], "lr": 0.05, "weight_decay": 0.0, "momentum": 0.5}])
    first, second = opt.param_groups
    assert (first["lr"], first["initial_lr"], first["weight_decay"], first["momentum"]) == \
        pytest.approx((0.6, 0.6, 0.002, 0.8))
    assert (second["lr"], second["initial_lr"], second["weight_decay"], second["momentum"]) == \
        pytest.approx((0.05, 0.05, 0.0, 0.5))
    assert isinstance(opt, LARS) == (name == "lars")


def test_lars_is_built_with_the_config_and_adapts_only_decayed_weights():
    cfg = load(None, ["method.name=simclr", "model.backbone=small_cnn", "optim.name=lars", "optim.lr=0.4",
                      "optim.scale_lr=false", "optim.trust_coefficient=0.002", "optim.momentum=0.8",
                      "optim.weight_decay=1e-4"])
    opt = build_optimizer(cfg, build_method(cfg, 10, 100).param_groups())
    assert isinstance(opt, LARS)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decay"]["lars"] and not by_name["no_decay"]["lars"] and not by_name["probe"]["lars"]
    assert by_name["decay"]["trust_coefficient"] == 0.002 and by_name["decay"]["momentum"] == 0.8
    assert by_name["decay"]["lr"] == by_name["decay"]["initial_lr"] == 0.4
    assert by_name["probe"]["lr"] == by_name["probe"]["initial_lr"] == 0.1 and by_name["probe"]["fixed_lr"]


def test_lars_defaults_by_hand():
    """LARS(params, lr=1): momentum 0.9, no weight decay, trust 1e-3. The gradient is
    orthogonal to w (weight decay would turn the update; along w LARS normalises it away):
    w = (3, 4), g = (0.4, -0.3): |g| = 0.5, trust 1e-3 * 5 / 0.5 = 0.01, w = (2.996, 4.003);
    then |w| = 5.0000025, trust 0.010000005, buf = 0.9 (0.004, -0.003) + trust g
    = (0.0076, -0.0057), w = (2.9884, 4.0087)."""
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = LARS([w], lr=1.0)
    for want in ([2.996, 4.003], [2.9884, 4.0087]):
        w.grad = torch.tensor([0.4, -0.3], dtype=torch.float64)
        opt.step()
        assert w.tolist() == pytest.approx(want, abs=1e-7)
    # a group that names no weight decay takes the constructor's: d = g + 0.1 w = (0.7, 0.1),
    # trust 0.02 * 5 / |d| = 0.141421, w = (3, 4) - 0.5 trust d = (2.950503, 3.992929)
    v = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = LARS([{"params": [v]}], lr=0.5, weight_decay=0.1, trust_coefficient=0.02)
    v.grad = torch.tensor([0.4, -0.3], dtype=torch.float64)
    opt.step()
    assert v.tolist() == pytest.approx([2.950503, 3.992929], abs=1e-6)


def test_schedule_edges():
    # one step of cosine after the warm-up: it ends the schedule (clamped at min_ratio after)
    assert lr_factor(2, 3, 2, 0.2) == pytest.approx(1.0)
    assert lr_factor(3, 3, 2, 0.2) == pytest.approx(0.2)
    # an optimizer with only fixed groups: no scheduled lr to report
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.3, "initial_lr": 0.3, "fixed_lr": True}], lr=0.3)
    assert set_lr(opt, 0.5) == 0.0 and opt.param_groups[0]["lr"] == 0.3
