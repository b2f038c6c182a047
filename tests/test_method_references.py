"""Each method's ``ssl_loss`` against a plain loop over the model's own features.

A tiny model in eval mode, so that BatchNorm uses its running statistics and every
sample's features are the same whichever batch it is in. Its backbone is a pooled linear map
(signed features: a random CNN's pooled ReLU features all point the same way, and attention
weights from them would all be 1, hiding a wrong pairing). The test
encodes each view on its own (h = backbone(view), z = projector(h)) and writes the loss out
anchor by anchor in float64 (which rows are positives, which keys are negatives, which bank
row is read). The method computes it its own way, batched; the two must agree.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpcl.config.compose import declared_only, load
from mpcl.data.batch import Batch
from mpcl.methods import build_method

N, CLASSES, SAMPLES = 6, 10, 40
D64 = torch.float64


def _method(name: str, **extra):
    over = {"method.name": name, "model.backbone": "small_cnn", "data.batch_size": N,
            "model.projector_hidden": 16, "model.projector_out": 8, "model.predictor_hidden": 4,
            "method.temperature": 0.4, "data.loader": "torch", "out": "/tmp/unused", **extra}
    cfg = load(None, declared_only(name, over))     # method.temperature where the method has it
    torch.manual_seed(0)
    method = build_method(cfg, CLASSES, SAMPLES)
    method.backbone = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, method.feature_dim))
    g = torch.Generator().manual_seed(1)
    for m in method.modules():   # running statistics that are not the identity
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return method.eval()


def _batch(views: int = 2, small: int = 16, seed: int = 0) -> Batch:
    """``views`` views of N samples: two 32x32, the rest ``small`` x ``small`` (multi-crop),
    each a 4x4 pattern of its sample plus noise whose strength differs from sample to sample
    (so that some samples' views agree more than others'); dataset indices that are neither
    0..N-1 nor sorted; labels with repeats."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.rand(N, 3, 4, 4, generator=g) - 0.5
    noise = torch.linspace(0.05, 1.5, N).view(N, 1, 1, 1)
    sizes = [32, 32] + [small] * (views - 2)
    out = [F.interpolate(pattern + noise * torch.randn(N, 3, 4, 4, generator=g), size=s) for s in sizes]
    return Batch(out, torch.tensor([17, 3, 29, 8, 0, 35]), torch.tensor([1, 4, 1, 7, 4, 1]))


@torch.no_grad()
def _encode(method, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """h and normalised z of every view, view after view, each view encoded on its own."""
    h = torch.cat([method.backbone(v) for v in batch.views])
    z = F.normalize(method.embed(h).to(D64), dim=1)      # the embedding alignment and uniformity see
    return h.to(D64), z


def _anchor_terms(z: torch.Tensor, positives: list[list[int]], T: float) -> list[float]:
    """l_i = -mean_{p in P(i)} log( exp(s_ip / T) / sum_{k != i} exp(s_ik / T) )."""
    out = []
    for i, pos in enumerate(positives):
        denom = sum(math.exp(float(z[i] @ z[k]) / T) for k in range(len(z)) if k != i)
        out.append(-sum(float(z[i] @ z[p]) / T - math.log(denom) for p in pos) / len(pos))
    return out


def _two_view_positives(n: int) -> list[list[int]]:
    return [[(i + n) % (2 * n)] for i in range(2 * n)]


def _same_id_positives(ids: list[int]) -> list[list[int]]:
    return [[k for k in range(len(ids)) if k != i and ids[k] == ids[i]] for i in range(len(ids))]


def _small_crops(views: int) -> dict:
    return {"data.num_small_crops": views - 2, "data.small_crop_size": 16} if views > 2 else {}


def _loss(method, batch, epoch: int = 0):
    with torch.no_grad():
        return method.ssl_loss(batch, epoch)


# -- SimCLR and SupCon ----------------------------------------------------------------------

def test_simclr_two_views_is_nt_xent_over_the_model_features():
    method, batch = _method("simclr"), _batch()
    _, z = _encode(method, batch)
    want = sum(_anchor_terms(z, _two_view_positives(N), 0.4)) / (2 * N)
    out = _loss(method, batch)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert out.features.shape == (2 * N, method.feature_dim)


@pytest.mark.parametrize("views", [3, 4])
def test_simclr_multi_crop_positives_are_the_other_crops_of_the_sample(views):
    method, batch = _method("simclr", **_small_crops(views)), _batch(views=views)
    _, z = _encode(method, batch)
    ids = batch.index.repeat(views).tolist()
    positives = _same_id_positives(ids)
    assert all(len(p) == views - 1 for p in positives)
    want = sum(_anchor_terms(z, positives, 0.4)) / (views * N)
    out = _loss(method, batch)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert out.features.shape == (2 * N, method.feature_dim)   # the probe sees the two large views


@pytest.mark.parametrize("views", [2, 4])
def test_supcon_positives_are_the_rows_with_the_anchor_label(views):
    method, batch = _method("supcon", **_small_crops(views)), _batch(views=views)
    _, z = _encode(method, batch)
    positives = _same_id_positives(batch.label.repeat(views).tolist())
    assert all(positives)                      # every label occurs twice or more
    want = sum(_anchor_terms(z, positives, 0.4)) / (views * N)
    assert _loss(method, batch).loss.item() == pytest.approx(want, rel=1e-5)


# -- SimSiam-Multi ----------------------------------------------------------------------------

def _neg_cos(p, t) -> float:
    return -float(p @ t) / (float(p.norm()) * float(t.norm()))


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_simsiam_multi_targets_mix_in_the_bank_row_of_each_sample(epoch):
    method = _method("simsiam_multi", **{"method.bank_warmup_epochs": 1, "method.bank_mix": 0.3})
    batch = _batch()
    g = torch.Generator().manual_seed(5)
    method.bank.snapshot.copy_(torch.randn(method.bank.snapshot.shape, generator=g))
    valid = torch.ones(SAMPLES, dtype=torch.bool)
    valid[batch.index[1]] = False              # a sample the previous epoch did not visit
    method.bank.snapshot_valid.copy_(valid)
    with torch.no_grad():
        h = torch.cat([method.backbone(v) for v in batch.views]).to(D64)
        z = method.projector(h.float()).to(D64)
        p = method.predictor(z.float()).to(D64)
    bank = method.bank.snapshot.to(D64)
    active = epoch > 1                         # the plain target through epoch bank_warmup_epochs
    total = 0.0
    for i in range(N):
        row = int(batch.index[i])
        mix = 0.3 if active and bool(valid[row]) else 0.0
        t1 = (1 - mix) * z[N + i] + mix * bank[row]     # view 1's prediction chases view 2's target
        t2 = (1 - mix) * z[i] + mix * bank[row]
        total += 0.5 * (_neg_cos(p[i], t1) + _neg_cos(p[N + i], t2))
    out = _loss(method, batch, epoch)
    assert out.loss.item() == pytest.approx(total / N, rel=1e-5)
    # this epoch's z2 went to the pending bank at the sample's row, nowhere else
    written = method.bank.pending_valid.nonzero().flatten().tolist()
    assert sorted(written) == sorted(batch.index.tolist())
    torch.testing.assert_close(method.bank.pending[batch.index].to(D64), z[N:], rtol=1e-5, atol=1e-6)


def test_simsiam_is_the_symmetric_negative_cosine():
    method, batch = _method("simsiam"), _batch()
    with torch.no_grad():
        z = method.projector(torch.cat([method.backbone(v) for v in batch.views])).to(D64)
        p = method.predictor(z.float()).to(D64)
    want = sum(0.5 * (_neg_cos(p[i], z[N + i]) + _neg_cos(p[N + i], z[i])) for i in range(N)) / N
    out = _loss(method, batch)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    # train/z_std: the spread over the batch of view 1's unit projections, averaged over dimensions
    u = [z[i] / z[i].norm() for i in range(N)]
    spread = [math.sqrt(sum((r[d] - sum(v[d] for v in u) / N) ** 2 for r in u) / (N - 1)) for d in range(z.shape[1])]
    assert out.metrics["train/z_std"].item() == pytest.approx(sum(spread) / len(spread), rel=1e-5)


# -- MoCo -------------------------------------------------------------------------------------

@pytest.mark.parametrize("symmetric", [False, True])
def test_moco_contrasts_queries_with_their_key_and_the_queue(symmetric):
    method = _method("moco", **{"method.queue_size": 2 * N * 3, "method.symmetric": symmetric,
                                "method.temperature": 0.2})
    with torch.no_grad():                       # the key encoder is no longer the query encoder
        for p in method.key_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    queue = method.queue.keys.clone().to(D64)
    ptr = int(method.queue.ptr)
    with torch.no_grad():
        q = [F.normalize(method.projector(method.backbone(v)).to(D64), dim=1) for v in batch.views]
        k = [F.normalize(method.key_encoder(v).to(D64), dim=1) for v in batch.views]

    def ce(qv, kv) -> float:
        total = 0.0
        for i in range(N):
            logits = [float(qv[i] @ kv[i]) / 0.2] + [float(qv[i] @ queue[j]) / 0.2 for j in range(len(queue))]
            total += math.log(sum(math.exp(x) for x in logits)) - logits[0]
        return total / N

    want = 0.5 * (ce(q[0], k[1]) + ce(q[1], k[0])) if symmetric else ce(q[0], k[1])
    out = _loss(method, batch)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    pos_sim = sum(float(q[0][i] @ k[1][i]) for i in range(N)) / N     # view 1's query and its key
    assert out.metrics["train/pos_sim"].item() == pytest.approx(pos_sim, rel=1e-5)
    with torch.no_grad():                       # the probe sees the views that were queries
        queried = [method.backbone(v) for v in (batch.views if symmetric else batch.views[:1])]
    torch.testing.assert_close(out.features, torch.cat(queried), rtol=1e-5, atol=1e-6)
    pushed = torch.cat([k[1], k[0]]) if symmetric else k[1]     # this step's keys enter the queue
    slots = [(ptr + j) % len(queue) for j in range(len(pushed))]
    torch.testing.assert_close(method.queue.keys[slots].to(D64), pushed, rtol=1e-5, atol=1e-6)
    untouched = [j for j in range(len(queue)) if j not in slots]
    assert torch.equal(method.queue.keys[untouched].to(D64), queue[untouched])


# -- SimCLR-Attn --------------------------------------------------------------------------------

def _attention_reference(method, batch, a: float, tau: float) -> tuple[float, torch.Tensor]:
    """The released SimCLR-Attn loss: sum_i c_i l_i / sum_i c_i with c_i = (1 - a) + a w_i,
    l_i anchor i's whole NT-Xent term, w = N softmax_i(cos(h_i, h_p(i)) / tau) (for several
    positives, the mean cosine to them)."""
    h, z = _encode(method, batch)
    views = len(batch.views)
    positives = _two_view_positives(N) if views == 2 else _same_id_positives(batch.index.repeat(views).tolist())
    cos = torch.tensor([sum(float(F.cosine_similarity(h[i], h[p], dim=0)) for p in pos) / len(pos)
                        for i, pos in enumerate(positives)], dtype=D64)
    w = torch.exp(cos / tau) / torch.exp(cos / tau).sum() * len(cos)
    c = (1 - a) + a * w
    terms = torch.tensor(_anchor_terms(z, positives, 0.4), dtype=D64)
    return float((c * terms).sum() / c.sum()), w


ATTN_CASES = {"two_views": 2, "one_small_crop": 3, "multi_crop": 4}


def _attn_method(views: int, a: float, tau: float):
    return _method("simclr_attn", **{"method.attention_weight": a, "method.attention_temperature": tau,
                                     **_small_crops(views)})


@pytest.mark.parametrize("case", list(ATTN_CASES))
def test_simclr_attn_weights_come_from_each_anchor_and_its_positive(case):
    """Weights N * softmax(cos(h_i, h_p(i)) / tau): reported as their max and min."""
    views = ATTN_CASES[case]
    method, batch = _attn_method(views, 0.7, 0.05), _batch(views=views)
    _, w = _attention_reference(method, batch, 0.7, 0.05)
    assert w.max() > 1.5 * w.min()              # far from uniform: a wrong pairing shows
    out = _loss(method, batch)
    assert out.metrics["train/attn_weight_max"].item() == pytest.approx(w.max().item(), rel=1e-4)
    assert out.metrics["train/attn_weight_min"].item() == pytest.approx(w.min().item(), rel=1e-4)


@pytest.mark.parametrize("case", list(ATTN_CASES))
def test_simclr_attn_at_weight_zero_is_simclr(case):
    views = ATTN_CASES[case]
    batch = _batch(views=views)
    simclr = _method("simclr", **_small_crops(views))
    attn = _attn_method(views, 0.0, 0.05)
    assert _loss(attn, batch).loss.item() == pytest.approx(_loss(simclr, batch).loss.item(), rel=1e-6)


@pytest.mark.parametrize("case", list(ATTN_CASES))
def test_simclr_attn_loss_is_the_released_weighted_mean(case):
    views = ATTN_CASES[case]
    method, batch = _attn_method(views, 0.7, 0.05), _batch(views=views)
    want, _ = _attention_reference(method, batch, 0.7, 0.05)
    out = _loss(method, batch)
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    with torch.no_grad():                       # the probe sees the two large views only
        large = torch.cat([method.backbone(v) for v in batch.views[:2]])
    torch.testing.assert_close(out.features, large, rtol=1e-5, atol=1e-6)


# -- a worker of two ------------------------------------------------------------------------------

def _other_worker(x: torch.Tensor) -> torch.Tensor:
    """The other worker's share of a gathered tensor: other samples (dataset indices and labels
    out of this worker's range; unit features that are no rotation of this worker's)."""
    return x + 1000 if not x.is_floating_point() else F.normalize(x.tanh() + 0.3, dim=-1)


def _as_worker_of_two(monkeypatch, rank: int):
    """Makes the methods run as worker ``rank`` of two: gathers put the other worker's share
    before or after this one's. Returns the gather."""
    from mpcl import distributed as dist

    def gather(x):
        return torch.cat([x, _other_worker(x)] if rank == 0 else [_other_worker(x), x])

    for name, fn in (("rank", lambda: rank), ("world_size", lambda: 2), ("gather", gather),
                     ("gather_with_grad", gather)):
        monkeypatch.setattr(dist, name, fn)
    return gather


def _global_positives(batch: Batch, views: int, gather) -> list[list[int]]:
    """Two views: the other view in the same worker's block; more: the rows of the same sample."""
    if views > 2:
        return _same_id_positives(gather(batch.index.repeat(views)).tolist())
    return [[b * 2 * N + (i + N) % (2 * N)] for b in range(2) for i in range(2 * N)]


@pytest.mark.parametrize("name, views", [("simclr", 2), ("simclr", 4), ("supcon", 2)])
def test_a_second_worker_contrasts_its_anchors_with_the_whole_gathered_batch(monkeypatch, name, views):
    method, batch = _method(name, **_small_crops(views)), _batch(views=views)
    _, z = _encode(method, batch)
    gather = _as_worker_of_two(monkeypatch, rank=1)
    if name == "supcon":
        positives = _same_id_positives(gather(batch.label.repeat(views)).tolist())
    else:
        positives = _global_positives(batch, views, gather)
    terms = _anchor_terms(gather(z), positives, 0.4)[views * N:]        # this worker's anchors
    assert _loss(method, batch).loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


@pytest.mark.parametrize("views", [2, 4])
def test_a_first_worker_weighs_its_anchors_among_the_whole_gathered_batch(monkeypatch, views):
    """Weights are a softmax over the global batch; the loss of a worker is the mean of its
    weighted terms over the global mean of the weights (so the workers' mean is the global ratio)."""
    a, tau = 0.7, 0.05
    method, batch = _attn_method(views, a, tau), _batch(views=views)
    h, z = _encode(method, batch)
    gather = _as_worker_of_two(monkeypatch, rank=0)
    positives = _global_positives(batch, views, gather)
    h_all = gather(h)
    cos = torch.tensor([sum(float(F.cosine_similarity(h_all[i], h_all[p], dim=0)) for p in pos) / len(pos)
                        for i, pos in enumerate(positives)], dtype=D64)
    w = torch.softmax(cos / tau, 0) * len(cos)
    c = (1 - a) + a * w
    terms = torch.tensor(_anchor_terms(gather(z), positives, 0.4), dtype=D64)
    m = views * N                                                        # this worker's anchors: the first m
    assert abs(float(w[:m].mean()) - 1) > 0.05                           # not the global mean
    out = _loss(method, batch)
    assert out.loss.item() == pytest.approx(float((c[:m] * terms[:m]).mean() / c.mean()), rel=1e-5)
    assert out.metrics["train/attn_weight_max"].item() == pytest.approx(float(w[:m].max()), rel=1e-4)


# -- MCL ----------------------------------------------------------------------------------------

MCL_WEIGHTS = {"method.alpha": 0.3, "method.beta": 0.7, "method.gamma": 1.3, "method.lam": 1.9,
               "method.temperature": 0.2, "method.kd_temperature": 2.0}


def _mcl_weighted(terms) -> float:
    return float(0.3 * terms["vcl"] + 0.7 * terms["icl"] + 1.3 * terms["soft_vcl"] + 1.9 * terms["soft_icl"])


@pytest.mark.parametrize("eval_network", [0, 1])
def test_mcl_networks_contrast_their_own_queries_keys_and_queues(eval_network):
    """Each network's query from view 1 (its backbone, its projector), key from view 2 (its key
    encoder), its own queue; the four terms weighted alpha, beta, gamma, lam (their loop
    references are in test_methods_baselines); this step's keys enter each network's queue."""
    from mpcl.losses import mcl_queue_terms

    method = _method("mcl", **{"method.queue_size": 2 * N, "method.eval_network": eval_network, **MCL_WEIGHTS})
    with torch.no_grad():
        for key in method.key_encoders:
            for p in key.parameters():
                p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    queues = [q.keys.clone() for q in method.queues]
    ptrs = [int(q.ptr) for q in method.queues]
    with torch.no_grad():
        hs = [b(batch.views[0]) for b in method.backbones()]
        qs = [F.normalize(method.projectors[i](hs[i]).to(D64), dim=1) for i in range(2)]
        ks = [F.normalize(method.key_encoders[i](batch.views[1]).to(D64), dim=1) for i in range(2)]
    terms = mcl_queue_terms(qs, ks, [q.to(D64) for q in queues], 0.2, 2.0)
    out = _loss(method, batch)
    assert out.loss.item() == pytest.approx(_mcl_weighted(terms), rel=1e-5)
    assert torch.equal(out.features, hs[eval_network])
    for name in ("vcl", "icl", "soft_vcl", "soft_icl"):
        assert out.metrics[f"train/{name}"].item() == pytest.approx(float(terms[name]), rel=1e-5)
    for i, q in enumerate(method.queues):
        torch.testing.assert_close(q.keys[ptrs[i]:ptrs[i] + N].to(D64), ks[i], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(method(batch.views[0]), hs[eval_network])


@pytest.mark.parametrize("logit_distill, eval_network", [(True, 0), (False, 1)])
def test_mcl_supervised_is_cross_entropy_distillation_and_the_four_terms(logit_distill, eval_network):
    from mpcl.losses import mcl_supervised_terms, soft_kl

    method = _method("mcl", **{"method.mode": "supervised", "method.logit_distill": logit_distill,
                               "method.embed_dim": 8, "method.eval_network": eval_network, **MCL_WEIGHTS})
    batch = _batch()
    y = batch.label
    with torch.no_grad():
        hs = [b(batch.views[0]) for b in method.backbones()]
        logits = [method.classifiers[i](hs[i]).to(D64) for i in range(2)]
        embs = [F.normalize(method.embedders[i](hs[i]).to(D64), dim=1) for i in range(2)]
    ce = sum(float(F.cross_entropy(lg, y)) for lg in logits)
    mean = (logits[0] + logits[1]) / 2
    kd = sum(float(soft_kl(lg, mean, 2.0)) for lg in logits) if logit_distill else 0.0
    terms = mcl_supervised_terms(embs, embs, y, y, torch.arange(N), 0.2, 2.0)
    out = _loss(method, batch)
    assert out.loss.item() == pytest.approx(ce + kd + _mcl_weighted(terms), rel=1e-5)
    assert torch.equal(out.features, hs[eval_network])
    assert out.metrics["train/ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out.metrics["train/logit_kd"].item() == pytest.approx(kd, rel=1e-5)
    for i in range(2):
        top1 = 100 * float((logits[i].argmax(1) == y).double().mean())
        assert out.metrics[f"train/net{i}_top1"].item() == pytest.approx(top1)


def test_mcl_supervised_embedding_head_is_linear_relu_linear():
    """Each network's embedding head is d-embed_dim-embed_dim with a ReLU between (the reference's)."""
    method = _method("mcl", **{"method.mode": "supervised", "method.embed_dim": 8})
    h = torch.randn(5, method.feature_dim, generator=torch.Generator().manual_seed(2))
    for head in method.embedders:
        first, second = [m for m in head.modules() if isinstance(m, nn.Linear)]
        assert (first.in_features, first.out_features, second.out_features) == (method.feature_dim, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(head(h), second(F.relu(first(h))))


def test_mcl_supervised_on_the_second_of_two_workers(monkeypatch):
    """Worker 1 of 2: the keys are both workers' embeddings in rank order (worker 0's first), the
    key labels both workers' labels; anchor k's own row is N + k, neither positive nor negative,
    while its counterpart on worker 0 (same label) is a positive."""
    from mpcl import distributed as dist
    from mpcl.losses import mcl_supervised_terms

    method = _method("mcl", **{"method.mode": "supervised", "method.embed_dim": 8, **MCL_WEIGHTS})
    batch = _batch()
    y = batch.label
    g = torch.Generator().manual_seed(3)
    worker0 = [F.normalize(torch.randn(N, 8, generator=g), dim=1) for _ in range(2)]
    gathered = iter(worker0)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    monkeypatch.setattr(dist, "gather_with_grad", lambda e: torch.cat([next(gathered), e]))
    monkeypatch.setattr(dist, "gather", lambda t: torch.cat([t, t]))   # worker 0 has the same labels
    with torch.no_grad():
        hs = [b(batch.views[0]) for b in method.backbones()]
        logits = [method.classifiers[i](hs[i]).to(D64) for i in range(2)]
        embs = [F.normalize(method.embedders[i](hs[i]).to(D64), dim=1) for i in range(2)]
    keys = [torch.cat([worker0[i].to(D64), embs[i]]) for i in range(2)]
    terms = mcl_supervised_terms(embs, keys, y, torch.cat([y, y]), N + torch.arange(N), 0.2, 2.0)
    ce = sum(float(F.cross_entropy(lg, y)) for lg in logits)
    out = _loss(method, batch)
    assert out.loss.item() == pytest.approx(ce + _mcl_weighted(terms), rel=1e-5)


# -- Barlow Twins ----------------------------------------------------------------------------------

def test_barlow_twins_is_the_cross_correlation_loss_of_the_two_views():
    from tests.helpers.references import reference_barlow

    method = _method("barlow_twins", **{"method.lambda": 0.02, "method.scale_loss": 0.3})
    batch = _batch()
    with torch.no_grad():
        z1, z2 = (method.projector(method.backbone(v)).to(D64) for v in batch.views)
    out = _loss(method, batch)
    assert out.loss.item() == pytest.approx(0.3 * reference_barlow(z1, z2, 0.02), rel=1e-4)
    # the projector: Linear-BN-ReLU twice, then a Linear without bias and nothing after it
    assert [type(layer).__name__ for layer in method.projector] == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    assert method.projector[-1].bias is None
    assert out.features.shape == (2 * N, method.feature_dim)
