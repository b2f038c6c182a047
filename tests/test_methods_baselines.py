"""Barlow Twins, SupCon, MoCo v2, MCL, multi-crop and SimCLR-Attn's step (SPCL: test_spcl.py).

Losses against direct (loop, float64) references on fixed tensors; the MoCo queue;
class-grouped batches; one CLI epoch of each method on real Fashion-MNIST."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpcl import cli
from mpcl.config import ConfigError
from mpcl.config.compose import load
from mpcl.data.augment import SSLAugment
from mpcl.data.batch import Batch
from mpcl.data.tensor_loader import TensorTrainLoader, class_grouped_order
from mpcl.engine.loop import reported_metrics
from mpcl.losses import (barlow_twins_loss, infonce_queue, mcl_queue_terms, mcl_supervised_terms, mcl_weighted,
                         multi_positive_terms, nt_xent, pair_indices, soft_kl, supcon_loss)
from mpcl.methods import build_method
from mpcl.methods.moco import KeyQueue, momentum_at, queue_length
from tests.helpers.references import gen, reference_barlow, small_method
from tests.helpers.runs import tiny_overrides

D64 = torch.float64


def unit(n, d, seed=0):
    return F.normalize(torch.randn(n, d, generator=gen(seed), dtype=D64), dim=1)


# -- Barlow Twins ---------------------------------------------------------------------------

def test_barlow_twins_matches_reference():
    z1 = torch.randn(9, 5, generator=gen(1), dtype=D64)
    z2 = z1 + 0.5 * torch.randn(9, 5, generator=gen(2), dtype=D64)
    for lambd in (0.0, 5e-3, 1.0):
        assert barlow_twins_loss(z1.float(), z2.float(), lambd).item() == pytest.approx(reference_barlow(z1, z2, lambd),
                                                                                         rel=1e-4)


def test_barlow_twins_is_zero_at_perfect_correlation():
    # orthogonal, centred columns of equal norm: standardised, their cross-correlation is I
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen(3), dtype=D64))
    z = q[:, 1:5] * 4.0                     # columns orthogonal to each other ...
    z = z - z.mean(0)                       # ... and (nearly) centred; re-orthogonalise after centring
    q2, _ = torch.linalg.qr(torch.cat([torch.ones(16, 1, dtype=D64), z], 1))
    z = q2[:, 1:] * 3.0
    assert barlow_twins_loss(z, z.clone(), 5e-3, eps=0.0).item() == pytest.approx(0.0, abs=1e-10)
    assert barlow_twins_loss(z, -z, 5e-3, eps=0.0).item() == pytest.approx(4.0 * 4, rel=1e-9)   # C = -I


def test_lambda_key_is_an_alias():
    assert load(None, ["method.name=barlow_twins", "method.lambda=0.01"]).method.barlow_lambda == 0.01


# -- SupCon / multi-positive ------------------------------------------------------------------

def reference_supcon(z, labels, T):
    N = z.shape[0]
    total, count = 0.0, 0
    for i in range(N):
        denom = sum(math.exp(float(z[i] @ z[k]) / T) for k in range(N) if k != i)
        pos = [p for p in range(N) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        total += -sum(float(z[i] @ z[p]) / T - math.log(denom) for p in pos) / len(pos)
        count += 1
    return total / count


def test_supcon_matches_reference():
    z = unit(12, 6, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 0, 1, 2, 0, 1, 4])
    self_idx = torch.arange(12)
    for T in (0.1, 0.5):
        got = supcon_loss(z, z, labels, labels, self_idx, T)
        assert got.item() == pytest.approx(reference_supcon(z, labels.tolist(), T), rel=1e-10)


def test_supcon_with_distinct_labels_is_nt_xent():
    n = 7
    z = unit(2 * n, 5, 5)
    labels = torch.randperm(100, generator=gen(6))[:n].repeat(2)   # distinct per sample, shared by its views
    self_idx, pos_idx = pair_indices(n, 0)
    assert supcon_loss(z, z, labels, labels, self_idx, 0.3).item() == pytest.approx(
        nt_xent(z, z, self_idx, pos_idx, 0.3).item(), rel=1e-12)


def test_multi_crop_positives_by_index():
    """Four crops of 3 samples: each anchor's positives are the 3 other crops of its sample."""
    n, v = 3, 4
    z = unit(n * v, 5, 7)
    ids = torch.arange(n).repeat(v)
    pos, lse, count = multi_positive_terms(z, z, ids, ids, torch.arange(n * v), 0.2)
    assert count.tolist() == [v - 1] * (n * v)
    assert ((lse - pos).mean()).item() == pytest.approx(reference_supcon(z, ids.tolist(), 0.2), rel=1e-10)


# -- MoCo and MCL -----------------------------------------------------------------------------

def reference_queue_ce(q, k, queue, T):
    total = 0.0
    for i in range(q.shape[0]):
        logits = [float(q[i] @ k[i]) / T] + [float(q[i] @ queue[j]) / T for j in range(queue.shape[0])]
        total += -logits[0] + math.log(sum(math.exp(x) for x in logits))
    return total / q.shape[0]


def reference_kl(student, teacher, T):
    total = 0.0
    for r in range(student.shape[0]):
        ps = torch.softmax(student[r] / T, 0).tolist()
        pt = torch.softmax(teacher[r] / T, 0).tolist()
        total += sum(t * (math.log(t) - math.log(s)) for s, t in zip(ps, pt))
    return total / student.shape[0] * T * T


def test_infonce_queue_and_soft_kl_match_reference():
    q, k, queue = unit(5, 4, 8), unit(5, 4, 9), unit(11, 4, 10)
    assert infonce_queue(q, k, queue, 0.2).item() == pytest.approx(reference_queue_ce(q, k, queue, 0.2), rel=1e-10)
    a = torch.randn(4, 6, generator=gen(11), dtype=D64)
    b = torch.randn(4, 6, generator=gen(12), dtype=D64)
    assert soft_kl(a, b, 3.0).item() == pytest.approx(reference_kl(a, b, 3.0), rel=1e-10)


def _queue_logits_ref(q, k, queue, T):
    return torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / T


def test_mcl_queue_terms_match_reference():
    N, T, kd = 3, 0.2, 3.0
    qs = [unit(5, 4, 20 + i) for i in range(N)]
    ks = [unit(5, 4, 30 + i) for i in range(N)]
    Qs = [unit(8, 4, 40 + i) for i in range(N)]
    got = mcl_queue_terms(qs, ks, Qs, T, kd)
    vcl = sum(reference_queue_ce(qs[i], ks[i], Qs[i], T) for i in range(N))
    icl = sum(reference_queue_ce(qs[i], ks[j], Qs[j], T) for i in range(N) for j in range(N) if i != j)
    intra = [_queue_logits_ref(qs[i], ks[i], Qs[i], T) for i in range(N)]
    soft_vcl = sum(reference_kl(intra[i], intra[j], kd) for i in range(N) for j in range(N) if i != j)
    soft_icl = sum(reference_kl(_queue_logits_ref(qs[i], ks[j], Qs[j], T), _queue_logits_ref(qs[j], ks[i], Qs[i], T),
                                kd)
                   for i in range(N) for j in range(N) if i != j)
    for name, want in (("vcl", vcl), ("icl", icl), ("soft_vcl", soft_vcl), ("soft_icl", soft_icl)):
        assert got[name].item() == pytest.approx(want, rel=1e-10), name
    w = mcl_weighted(got, 0.1, 0.2, 0.3, 0.4).item()
    assert w == pytest.approx(0.1 * vcl + 0.2 * icl + 0.3 * soft_vcl + 0.4 * soft_icl, rel=1e-10)


def test_mcl_with_one_network_is_moco():
    q, k, Q = unit(6, 4, 50), unit(6, 4, 51), unit(9, 4, 52)
    terms = mcl_queue_terms([q], [k], [Q], 0.2, 3.0)
    assert terms["icl"].item() == terms["soft_vcl"].item() == terms["soft_icl"].item() == 0.0
    assert mcl_weighted(terms, 1, 1, 1, 1).item() == pytest.approx(infonce_queue(q, k, Q, 0.2).item(), rel=1e-12)


def reference_sup_mcl(embs, labels, tau, kd):
    """The released ``SupMCL.forward`` (masks and all), in float64."""
    n = labels.shape[0]
    lab = labels[None]
    intra_mask = (lab == lab.T).to(D64) - torch.eye(n, dtype=D64)
    diag = 1 - torch.eye(n, dtype=D64)

    def contrast(logit):
        log_prob = logit - torch.log((torch.exp(logit) * diag).sum(1, keepdim=True))
        return -((intra_mask * log_prob).sum(1) / intra_mask.sum(1)).mean()
    N = len(embs)
    icl = soft_icl = vcl = soft_vcl = 0.0
    for i in range(N):
        for j in range(i + 1, N):
            l_ij, l_ji = embs[i] @ embs[j].T / tau, embs[j] @ embs[i].T / tau
            soft_icl += reference_kl(l_ij, l_ji, kd) + reference_kl(l_ji, l_ij, kd)
            icl += float(contrast(l_ij) + contrast(l_ji))
    intra = [e @ e.T / tau for e in embs]
    for i in range(N):
        vcl += float(contrast(intra[i]))
        for j in range(N):
            if i != j:
                soft_vcl += reference_kl(intra[i], intra[j], kd)
    return {"vcl": vcl, "icl": icl, "soft_vcl": soft_vcl, "soft_icl": soft_icl}


def test_mcl_supervised_terms_match_the_released_code():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    embs = [unit(8, 6, 60 + i) for i in range(3)]
    got = mcl_supervised_terms(embs, embs, labels, labels, torch.arange(8), 0.1, 3.0)
    want = reference_sup_mcl(embs, labels, 0.1, 3.0)
    for name in want:
        assert got[name].item() == pytest.approx(want[name], rel=1e-9), name


def test_mcl_supervised_with_one_network_is_supcon():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    e = unit(6, 5, 70)
    terms = mcl_supervised_terms([e], [e], labels, labels, torch.arange(6), 0.1, 3.0)
    assert terms["icl"].item() == terms["soft_vcl"].item() == terms["soft_icl"].item() == 0.0
    want = supcon_loss(e, e, labels, labels, torch.arange(6), 0.1).item()
    assert mcl_weighted(terms, 1, 1, 1, 1).item() == pytest.approx(want, rel=1e-12)


def _batch(n=4, seed=0, size=32, views=2):
    g = gen(seed)
    return Batch([torch.rand(n, 3, size, size, generator=g) for _ in range(views)],
                 torch.arange(n), torch.arange(n) % 10)


def test_mcl_method_with_one_network_is_the_moco_method():
    torch.manual_seed(0)
    moco = build_method(small_method("moco", **{"method.queue_size": 12}), 10, 100)
    torch.manual_seed(0)
    mcl = build_method(small_method("mcl", **{"method.queue_size": 12, "method.num_networks": 1, "method.alpha": 1.0}),
                       10, 100)
    batch = _batch()
    for _ in range(3):   # the queues fill identically too
        a, b = moco.ssl_loss(batch, 0).loss, mcl.ssl_loss(batch, 0).loss
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert torch.equal(moco.queue.keys, mcl.queues[0].keys)


def test_mcl_mlp_head_is_really_used():
    m = build_method(small_method("mcl", **{"method.queue_size": 8, "method.mlp": True}), 10, 100)
    for proj, key in zip(m.projectors, m.key_encoders):
        assert isinstance(proj[0], nn.Linear) and isinstance(proj[1], nn.ReLU) and len(proj) == 3
        assert len(key[1]) == 3                                 # the key encoder has it too
    m.ssl_loss(_batch(), 0).loss.backward()
    assert m.projectors[0][0].weight.grad.abs().sum() > 0       # gradient reaches the hidden layer
    assert m.projectors[1][0].weight.grad.abs().sum() > 0
    linear = build_method(small_method("mcl", **{"method.queue_size": 8, "method.mlp": False}), 10, 100)
    assert len(linear.projectors[0]) == 1


# -- the MoCo queue -------------------------------------------------------------------------

def test_queue_enqueue_order_and_wrap_around():
    q = KeyQueue(10, 3)
    batches = [F.normalize(torch.randn(4, 3, generator=gen(70 + i)), dim=1) for i in range(4)]
    q.push(batches[0])
    assert torch.equal(q.keys[:4], batches[0]) and int(q.ptr) == 4
    q.push(batches[1])
    assert torch.equal(q.keys[4:8], batches[1]) and int(q.ptr) == 8
    q.push(batches[2])                       # 2 slots left: wraps to the front
    assert torch.equal(q.keys[8:10], batches[2][:2]) and torch.equal(q.keys[:2], batches[2][2:])
    assert int(q.ptr) == 2
    assert torch.equal(q.keys[2:4], batches[0][2:])          # the oldest surviving keys
    q.push(torch.cat([batches[3], batches[3], batches[3]]))  # more keys than slots: newest kept
    assert int(q.ptr) == (2 + 12) % 10
    newest = torch.cat([batches[3], batches[3], batches[3]])[-10:]
    assert torch.equal(q.keys.roll(-int(q.ptr), 0), newest)    # oldest first from the pointer


def test_queue_length_and_momentum_schedule():
    assert queue_length(4096, 256) == 4096
    assert queue_length(1000, 256) == 768 and queue_length(100, 256) == 256
    assert momentum_at(0.99, "constant", 5, 10) == 0.99
    assert momentum_at(0.99, "cosine", 9, 10) == pytest.approx(1.0)
    assert momentum_at(0.99, "cosine", -1, 10) == pytest.approx(0.99)
    assert momentum_at(0.99, "cosine", 4, 10) == pytest.approx(0.995)      # half-way: cos = 0
    assert momentum_at(0.9, "cosine", 2, 12) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    assert momentum_at(0.99, "cosine", 15, 10) == 1.0                       # stays at 1 past the end
    assert momentum_at(0.9, "cosine", 0, 1) == 1.0                          # a one-step run ends at 1


def test_a_new_queue_holds_unit_keys():
    keys = KeyQueue(50, 4).keys
    assert keys.shape == (50, 4) and int(KeyQueue(50, 4).ptr) == 0
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(50))


def test_the_queue_holds_whole_steps_of_keys():
    """method.queue_size rounded down to a multiple of the keys pushed per step: the batch,
    or both views' keys when symmetric."""
    assert build_method(small_method("moco", **{"method.queue_size": 20}), 10, 100).queue.size == 20
    symmetric = small_method("moco", **{"method.queue_size": 20, "method.symmetric": True})
    assert build_method(symmetric, 10, 100).queue.size == 16


def test_moco_v1_head_is_one_linear_map():
    cfg = small_method("moco", **{"method.queue_size": 8, "method.mlp": False, "method.temperature": 0.3})
    m = build_method(cfg, 10, 100).eval()
    assert [type(layer) for layer in m.projector] == [nn.Linear]
    assert m.projector[0].weight.shape == (8, m.feature_dim)
    batch, queue = _batch(), m.queue.keys.clone()
    with torch.no_grad():
        q = F.normalize(m.projector[0](m.backbone(batch.views[0])).double(), dim=1)
        k = F.normalize(m.key_encoder(batch.views[1]).double(), dim=1)
        got = m.ssl_loss(batch, 0).loss.item()
    assert got == pytest.approx(reference_queue_ce(q, k, queue.double(), 0.3), rel=1e-5)


def test_moco_state_restored_on_resume():
    cfg = small_method("moco", **{"method.queue_size": 10})
    torch.manual_seed(0)
    a = build_method(cfg, 10, 100)
    for s in range(3):
        a.ssl_loss(_batch(seed=s), 0)
        a.after_optimizer_step(s, 10)
    with torch.no_grad():
        a.backbone.net[0].weight.add_(1.0)   # query and key encoders now differ
    a.after_optimizer_step(3, 10)
    state = a.state_dict()
    assert int(state["queue.ptr"]) == (3 * 4) % 8            # queue rounded to 8 = 2 global batches
    torch.manual_seed(1)
    b = build_method(cfg, 10, 100)
    assert not torch.equal(b.queue.keys, a.queue.keys)
    b.load_state_dict(state)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.key_encoder[0].net[0].weight, a.backbone.net[0].weight)
    batch = _batch(seed=9)
    assert a.ssl_loss(batch, 0).loss.item() == b.ssl_loss(batch, 0).loss.item()


def test_momentum_update_is_an_ema():
    m = build_method(small_method("moco", **{"method.queue_size": 8, "method.momentum": 0.9}), 10, 100)
    q0 = m.backbone.net[0].weight.detach().clone()
    with torch.no_grad():
        m.backbone.net[0].weight.add_(1.0)
    m.after_optimizer_step(0, 10)
    assert torch.allclose(m.key_encoder[0].net[0].weight, 0.9 * q0 + 0.1 * (q0 + 1.0), atol=1e-6)
    # cosine schedule: step 4 of 10 is half-way, momentum 1 - 0.1 / 2
    m = build_method(small_method("moco", **{"method.queue_size": 8, "method.momentum": 0.9,
                                        "method.momentum_schedule": "cosine"}), 10, 100)
    k0 = m.key_encoder[0].net[0].weight.detach().clone()
    with torch.no_grad():
        m.backbone.net[0].weight.add_(1.0)
    m.after_optimizer_step(4, 10)
    assert torch.allclose(m.key_encoder[0].net[0].weight, k0 + 0.05, atol=1e-6)


# -- loaders: class-grouped batches and multi-crop ---------------------------------------------

def test_class_grouped_batches_hold_two_of_each_class_present():
    labels = torch.randint(10, (203,), generator=gen(5))
    order = class_grouped_order(labels, 2, gen(1))
    assert len(set(order.tolist())) == len(order)
    images = torch.zeros(203, 3, 8, 8, dtype=torch.uint8)
    loader = TensorTrainLoader(images, labels, 16, 0, 1, 0, SSLAugment(8), torch.device("cpu"), min_per_class=2)
    assert len(loader) == int((torch.bincount(labels) // 2).sum()) * 2 // 16
    for batch in loader:
        counts = torch.bincount(batch.label)
        assert ((counts == 0) | (counts >= 2)).all()


def test_multi_crop_views():
    images = torch.zeros(32, 3, 32, 32, dtype=torch.uint8)
    loader = TensorTrainLoader(images, torch.zeros(32, dtype=torch.long), 8, 0, 1, 0, SSLAugment(32),
                               torch.device("cpu"), small_augment=SSLAugment(14, crop_scale=(0.05, 0.14)),
                               num_small_crops=3)
    batch = next(iter(loader))
    assert [tuple(v.shape[-2:]) for v in batch.views] == [(32, 32)] * 2 + [(14, 14)] * 3


def test_multi_crop_config_rules():
    with pytest.raises(ConfigError, match="data.num_small_crops=2: multi-crop is supported by.*simclr"):
        load(None, ["method.name=moco", "data.num_small_crops=2"])
    with pytest.raises(ConfigError, match="data.loader=torch"):
        load(None, ["method.name=supcon", "data.num_small_crops=2", "data.loader=ffcv"])
    with pytest.raises(ConfigError, match="data.min_per_class=3"):
        load(None, ["data.min_per_class=3", "data.batch_size=256"])
    with pytest.raises(ConfigError, match="method.eval_network=2"):
        load(None, ["method.name=mcl", "method.eval_network=2"])


# -- one epoch of each through the CLI ----------------------------------------------------------

# The queue methods start with a queue of random keys (easy negatives): their loss rises while
# real keys replace them. With a queue of one batch it holds only real keys from epoch 1 on,
# so their training is judged on epochs 1 and 2 (192 samples: three epochs of 3 steps).
QUEUE = {"method.queue_size": 64, "data.subset": 192, "train.epochs": 3}
CLI_CASES = {
    "barlow_twins": {},
    "supcon": {"data.num_small_crops": 2, "data.small_crop_size": 16},
    "moco": QUEUE,
    "mcl": {**QUEUE, "method.report_networks": True},
    "mcl_supervised": {"method.mode": "supervised", "data.min_per_class": 2},
    "spcl": {"method.num_prototypes": 20},
}


# mcl (several networks) trains in the fast suite; the others in the full one, each with its
# unit-level reference and gradient-flow tests in the fast suite
FAST_CLI_CASES = ("mcl",)


@pytest.mark.parametrize("case", [c if c in FAST_CLI_CASES else pytest.param(c, marks=pytest.mark.slow)
                                  for c in CLI_CASES])
def test_each_new_method_trains_through_the_cli(case, tmp_path, fmnist_path):
    """256 samples in batches of 64 for two epochs (the samples of one epoch of 512), evaluated
    at the end only: the mean training loss of the last epoch is below that of the one before."""
    method = case.split("_supervised")[0]
    out = tmp_path / case
    over = {"data.path": fmnist_path, "data.subset": 256, "data.batch_size": 64, "train.epochs": 2,
            "train.eval_every": 100, **CLI_CASES[case]}
    overrides = tiny_overrides(out, method, **over)
    cli.main(["train", "--config", f"configs/fmnist_{method}.yaml", "--no-ray", *overrides])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(over["train.epochs"]))
    assert rows[-1]["train/loss"] < rows[-2]["train/loss"]      # training helped
    last = rows[-1]
    # the declared metric names (a sweep's objective is checked against them) are the reported ones
    assert sorted(last) == sorted(reported_metrics(load(f"configs/fmnist_{method}.yaml", overrides)))
    assert "val/knn_top1" in last and "val/knn_top1" not in rows[-2]   # evaluated at the end only
    if case == "mcl":
        assert {"val/knn_top1_net0", "val/knn_top1_net1", "train/icl", "train/soft_vcl"} <= last.keys()
    if case == "mcl_supervised":
        assert {"val/net0_top1", "val/net1_top1", "val/ensemble_top1"} <= last.keys()
    if case == "spcl":
        assert {"train/cluster_ce", "train/metric_bce"} <= last.keys()
