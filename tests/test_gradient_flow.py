"""Where gradient must not flow, and where it must be summed over workers.

* The online probe learns from detached features: the encoder's gradient of a training step
  is that of the SSL loss alone (solo-learn's "online linear evaluation via stop-gradient").
* SimCLR-Attn's weights and the normaliser of its weighted mean are constants, as in the
  released GRAPH-ATTENTION loss (``logprob * sims.detach()``, ``weight_sum = ... .item()``).
* Memory banks are read as constants and written without an autograd graph.
* MoCo's and MCL's key encoders stay out of autograd (no gradient, moved by the EMA after the
  optimizer step only), their queues hold no graph, and a soft (KL) term's teacher is a constant.
* ``gather_with_grad`` sums the gathered gradient over workers: two gloo processes give every
  local input the gradient of the global mean loss times the world size, and every method that
  gathers with gradient gives, averaged over two workers, the one-worker loss and gradients.

Everything runs on fixed random tensors, with the small CNN on 16x16 images (the attention
weights: a pooled linear map, whose features spread).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as tdist
import torch.nn.functional as F

from mpcl import distributed as dist
from mpcl.config.compose import declared_only, load
from mpcl.data.batch import Batch
from mpcl.losses import prototype_pairs, soft_kl
from mpcl.methods import METHODS, build_method
from mpcl.methods.bank import SnapshotBank
from mpcl.methods.moco import KeyQueue
from tests.helpers.ranks import on_gloo_ranks

N, CLASSES, SAMPLES, SIZE = 6, 10, 40, 16
INDEX = torch.tensor([17, 3, 29, 8, 0, 35])
LABEL = torch.tensor([1, 4, 1, 7, 4, 1])


def _config(name: str, **extra):
    over = {"method.name": name, "model.backbone": "small_cnn", "data.batch_size": N,
            "model.projector_hidden": 16, "model.projector_out": 8, "model.predictor_hidden": 4,
            "method.queue_size": 4 * N, "method.embed_dim": 8, "data.loader": "torch", "out": "/tmp/unused",
            **extra}
    return load(None, declared_only(name, over))     # the method.* keys this method has


def _method(name: str, samples: int = SAMPLES, **extra):
    torch.manual_seed(0)
    return build_method(_config(name, **extra), CLASSES, samples)


def _multi_crop(views: int) -> dict:
    return {"data.num_small_crops": views - 2, "data.small_crop_size": SIZE // 2} if views > 2 else {}


def _batch(views: int = 2, index: torch.Tensor = INDEX, label: torch.Tensor = LABEL, seed: int = 0) -> Batch:
    """Each view a 4x4 signed pattern of its sample plus noise whose strength differs from sample
    to sample (some samples' views agree more than others'), upsampled: two SIZE x SIZE views,
    then half-size crops."""
    g = torch.Generator().manual_seed(seed)
    n = index.shape[0]
    pattern = torch.rand(n, 3, 4, 4, generator=g) - 0.5
    noise = torch.linspace(0.05, 1.5, n).view(n, 1, 1, 1)
    sizes = [SIZE, SIZE] + [SIZE // 2] * (views - 2)
    out = [F.interpolate(pattern + noise * torch.randn(n, 3, 4, 4, generator=g), size=s) for s in sizes]
    return Batch(out, index, label)


def _fill_bank(method, batch: Batch) -> None:
    """A snapshot from a previous epoch: unit rows, every sample seen but the batch's second."""
    g = torch.Generator().manual_seed(4)
    bank = method.bank
    bank.snapshot.copy_(F.normalize(torch.randn(bank.snapshot.shape, generator=g), dim=1))
    bank.snapshot_valid.fill_(True)
    bank.snapshot_valid[batch.index[1]] = False


def _cluster(method, pseudo: torch.Tensor) -> None:
    """SPCL as after its clustering: these prototypes, the full loss."""
    method.pseudo_labels.copy_(pseudo)
    method.clustered_epoch.fill_(0)
    method._clustered = True


def _prepared(name: str, views: int = 2, **extra) -> tuple[torch.nn.Module, Batch, int]:
    """The method in the state where every term of its loss is on: a bank that mixes (epoch 1,
    warm-up 0), SPCL's prototypes. Returns (method, batch, epoch)."""
    method = _method(name, **{"method.bank_warmup_epochs": 0, **_multi_crop(views), **extra})
    batch, epoch = _batch(views), 0
    if hasattr(method, "bank"):
        _fill_bank(method, batch)
        epoch = 1
    if name == "spcl":
        _cluster(method, torch.arange(SAMPLES) % 3)
    return method.train(), batch, epoch


def _grads(method, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    method.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def _relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def _gradient_distance(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> tuple[float, str]:
    """|got - want| / |want| over all of ``want``'s parameters together (a parameter whose own
    gradient is about zero, e.g. a bias before BatchNorm, weighs by its size), and the parameter
    that differs most."""
    diff = {n: float((got[n].double() - g.double()).norm()) for n, g in want.items()}
    total = sum(float(g.double().norm()) ** 2 for g in want.values()) ** 0.5
    return sum(d ** 2 for d in diff.values()) ** 0.5 / total, max(diff, key=diff.get)


# -- the online probe ------------------------------------------------------------------------------

PROBE_CASES = {**{name: (name, {}) for name in sorted(METHODS)},
               "mcl_supervised": ("mcl", {"method.mode": "supervised", "method.logit_distill": True}),
               "simclr_multi_crop": ("simclr", {"views": 4})}


@pytest.mark.parametrize("case", list(PROBE_CASES))
def test_the_probe_sends_no_gradient_into_the_encoder(case):
    """Backbone and heads get from ``training_step`` exactly the gradient of ``ssl_loss`` alone
    (same state, same random stream); the probe gets a gradient of its own."""
    name, extra = PROBE_CASES[case]
    method, batch, epoch = _prepared(name, **extra)
    twin = copy.deepcopy(method)
    torch.manual_seed(1)
    step = method.training_step(batch, epoch)
    torch.manual_seed(1)
    ssl = twin.ssl_loss(batch, epoch)
    got, want = _grads(method, step.loss), _grads(twin, ssl.loss)
    probe = {n: got.pop(n, None) for n in ("probe.weight", "probe.bias")}
    assert all(g is not None and g.abs().sum() > 0 for g in probe.values()), f"{case}: the probe did not learn"
    assert not any(n.startswith("probe.") for n in want)
    assert any(n.startswith("backbone.") for n in want), f"{case}: no encoder gradient to compare"
    assert got.keys() == want.keys(), f"{case}: the probe's loss reached {sorted(got.keys() - want.keys())}"
    changed = [n for n in want if not torch.equal(got[n], want[n])]
    assert not changed, (f"{case}: the probe's loss changed the gradient of {changed[:3]} "
                         f"(relative distance {_relative_distance(got[changed[0]], want[changed[0]]):.1e})")


# -- SimCLR-Attn: the attention weights are constants ----------------------------------------------

ATTENTION_CASES = {"simclr_attn": ("simclr_attn", 2), "simclr_attn_multi_crop": ("simclr_attn", 4),
                   "simclr_attn_multi": ("simclr_attn_multi", 2)}
A, ATTENTION_T = 0.7, 0.5


def _signed_backbone(method) -> None:
    """A pooled linear map in place of the CNN: signed features whose cosines spread (a random
    CNN's pooled ReLU features all point the same way, and its InfoNCE terms are all alike, so
    weights with a gradient would barely change the step)."""
    torch.manual_seed(2)
    method.backbone = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                          torch.nn.Linear(48, method.feature_dim))


def _weighted_loss(method, batch: Batch, epoch: int, weights_carry_gradient: bool) -> torch.Tensor:
    """The released form from the method's own InfoNCE terms: sum_i c_i l_i / sum_i c_i with
    c_i = (1 - a) + a w_i, w = N softmax_i(mean cos(h_i, h_p) over the positives p of i / t),
    computed here from the backbone features: detached (the released convention) or not."""
    h, z = method.encode_views(batch)
    pos, lse = method.infonce_terms(z, batch, epoch)
    ids = batch.index.repeat(len(batch.views))
    same = (ids[:, None] == ids[None, :]) & ~torch.eye(ids.shape[0], dtype=torch.bool)
    hn = F.normalize((h if weights_carry_gradient else h.detach()).double(), dim=1)
    cos = (hn @ hn.T * same).sum(1) / same.sum(1)
    w = torch.softmax(cos / ATTENTION_T, dim=0) * cos.shape[0]
    c = (1 - A) + A * w
    return (c * (lse - pos).double()).mean() / c.mean()


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_weights_enter_the_loss_as_constants(case):
    """The method's gradient is that of the weighted loss with the weights (and their sum) as
    constants; weights that carried gradient would give a gradient far from it."""
    name, views = ATTENTION_CASES[case]
    method, batch, epoch = _prepared(name, views, **{"method.attention_weight": A,
                                                     "method.attention_temperature": ATTENTION_T})
    _signed_backbone(method)
    const, carried = copy.deepcopy(method), copy.deepcopy(method)
    out = method.ssl_loss(batch, epoch)
    assert out.metrics["train/attn_weight_max"] > 1.5 * out.metrics["train/attn_weight_min"]   # weights matter
    got = _grads(method, out.loss)
    want_loss = _weighted_loss(const, batch, epoch, weights_carry_gradient=False)
    assert out.loss.item() == pytest.approx(want_loss.item(), rel=1e-5)
    want = _grads(const, want_loss)
    wrong = _grads(carried, _weighted_loss(carried, batch, epoch, weights_carry_gradient=True))
    assert got.keys() == want.keys() == wrong.keys()
    # the comparison can tell the two apart: weights with a gradient move the backbone's gradient
    backbone = [n for n in want if n.startswith("backbone.")]
    assert _gradient_distance({n: wrong[n] for n in backbone}, {n: want[n] for n in backbone})[0] > 1e-2
    d, worst = _gradient_distance(got, want)
    assert d < 1e-5, f"{case}: the gradient is {d:.1e} away from the one with constant weights (most: {worst})"


# -- memory banks: read as constants, written without a graph --------------------------------------

BANKED = ("simsiam_multi", "simclr_attn_multi")


def _bank_with_a_gradient_path(method) -> torch.Tensor:
    """Makes the snapshot a leaf that requires grad: any gradient that reaches a read shows."""
    leaf = method.bank.snapshot.clone().requires_grad_()
    method.bank.snapshot = leaf
    return leaf


@pytest.mark.parametrize("name", BANKED)
def test_bank_reads_enter_the_loss_as_constants(name):
    method, batch, epoch = _prepared(name, **{"method.bank_mix": 0.5})
    other = copy.deepcopy(method)
    leaf = _bank_with_a_gradient_path(method)
    loss = method.training_step(batch, epoch).loss
    loss.backward()
    assert leaf.grad is None, f"{name}: the bank read got a gradient ({leaf.grad.abs().max():.1e})"
    with torch.no_grad():                           # the read matters: another snapshot, another loss
        other.bank.snapshot.mul_(-1)
    assert abs(other.training_step(batch, epoch).loss.item() - loss.item()) > 1e-4


SIAMESE_CASES = {"simsiam": ("simsiam", 0, {}),
                 "simsiam_multi_warm_up": ("simsiam_multi", 0, {"method.bank_mix": 0.5}),   # plain targets
                 "simsiam_multi_mixed": ("simsiam_multi", 1, {"method.bank_mix": 0.5})}


@pytest.mark.parametrize("case", list(SIAMESE_CASES))
def test_siamese_gradient_is_that_of_constant_targets(case):
    """Predictions chase sg(z_other), mixed with the bank row once the bank mixes
    ((1 - b) sg(z_other) + b bank[index]): the gradient reaches the encoder through the
    predictions only (SimSiam's stop-gradient and the bank's)."""
    name, epoch, extra = SIAMESE_CASES[case]
    method, batch, _ = _prepared(name, **extra)
    ref = copy.deepcopy(method)
    got = _grads(method, method.ssl_loss(batch, epoch).loss)
    h = ref.backbone(torch.cat(batch.views[:2]))
    z = ref.projector(h)
    p = ref.predictor(z)
    z1, z2 = z[:N].detach(), z[N:].detach()
    t1, t2 = z2, z1
    if epoch:
        b = ref.params.bank_mix
        values, valid = ref.bank.read(batch.index)
        assert valid.sum() == N - 1                 # mixed rows and a row the bank has not seen
        t1 = torch.where(valid[:, None], (1 - b) * z2 + b * values, z2)
        t2 = torch.where(valid[:, None], (1 - b) * z1 + b * values, z1)
    loss = -0.5 * (F.cosine_similarity(p[:N], t1).mean() + F.cosine_similarity(p[N:], t2).mean())
    want = _grads(ref, loss)
    assert got.keys() == want.keys()
    d, worst = _gradient_distance(got, want)
    assert d < 1e-5, f"{case}: the gradient is {d:.1e} away from the one with constant targets (most: {worst})"


@pytest.mark.parametrize("name", BANKED)
def test_bank_writes_hold_no_graph(name):
    """After a step and its backward the pending bank is plain data; it becomes the snapshot,
    and the next epoch's step reads it and backpropagates without touching the first graph."""
    method, batch, _ = _prepared(name, **{"method.bank_mix": 0.5})
    method.training_step(batch, 0).loss.backward()
    bank = method.bank
    assert bool(bank.pending_valid[batch.index].all())
    assert not bank.pending.requires_grad and bank.pending.grad_fn is None, f"{name}: the bank keeps a graph"
    bank.end_epoch(0)
    assert not bank.snapshot.requires_grad and bank.snapshot.grad_fn is None
    method.training_step(batch, 1).loss.backward()
    assert not bank.pending.requires_grad and bank.pending.grad_fn is None


def test_a_bank_write_stores_values_not_their_graph():
    bank = SnapshotBank(4, 3)
    values = torch.randn(2, 3, requires_grad=True) * 2.0
    bank.write(torch.tensor([3, 1]), values)
    assert not bank.pending.requires_grad and bank.pending.grad_fn is None, "the bank keeps the values' graph"
    assert torch.equal(bank.pending[[3, 1]], values.detach())


def test_a_queue_push_stores_keys_not_their_graph():
    queue = KeyQueue(5, 3)
    keys = F.normalize(torch.randn(2, 3, requires_grad=True), dim=1)
    queue.push(keys)
    assert not queue.keys.requires_grad and queue.keys.grad_fn is None, "the queue keeps the keys' graph"
    assert torch.equal(queue.keys[:2], keys.detach())


# -- MoCo and MCL: key encoders outside autograd, queues without a graph ---------------------------

KEYED_CASES = {"moco": ("moco", {}), "moco_symmetric": ("moco", {"method.symmetric": True}),
               "mcl": ("mcl", {})}


def _keyed(method) -> list[tuple[torch.nn.Module, list[torch.nn.Parameter], KeyQueue]]:
    """(key encoder, the online parameters it follows, queue) of every network."""
    if hasattr(method, "key_encoders"):
        return [(key, [*backbone.parameters(), *proj.parameters()], queue)
                for key, backbone, proj, queue in zip(method.key_encoders, method.backbones(), method.projectors,
                                                      method.queues)]
    return [(method.key_encoder, method.query_params(), method.queue)]


@pytest.mark.parametrize("case", list(KEYED_CASES))
def test_key_encoders_get_no_gradient_and_move_only_after_the_optimizer_step(case):
    name, extra = KEYED_CASES[case]
    method, batch, epoch = _prepared(name, **{"method.momentum": 0.9, **extra})
    keyed = _keyed(method)
    for key, online, _ in keyed:
        assert {id(p) for p in key.parameters()}.isdisjoint(map(id, online)), "the key encoder shares parameters"
        assert not any(p.requires_grad for p in key.parameters()), f"{case}: key parameters require grad"
    with torch.no_grad():                          # key encoders that no longer equal the online ones
        for key, _, _ in keyed:
            for p in key.parameters():
                p.add_(0.05 * torch.randn_like(p))
    before = [[p.detach().clone() for p in key.parameters()] for key, _, _ in keyed]
    method.training_step(batch, epoch).loss.backward()
    for (key, online, queue), old in zip(keyed, before):
        assert all(p.grad is None for p in key.parameters()), f"{case}: the key encoder got a gradient"
        assert all(p.grad is not None for p in online) and any(p.grad.abs().sum() > 0 for p in online)
        assert all(torch.equal(p, o) for p, o in zip(key.parameters(), old)), f"{case}: keys moved in the step"
        assert not queue.keys.requires_grad and queue.keys.grad_fn is None, f"{case}: the queue keeps a graph"
    with torch.no_grad():                          # an optimizer step: the online encoders move
        for _, online, _ in keyed:
            for p in online:
                p.sub_(0.5 * p.grad)
    method.after_optimizer_step(0, 10)
    for (key, online, _), old in zip(keyed, before):
        for p, o, q in zip(key.parameters(), old, online):
            assert p.grad_fn is None and not p.requires_grad, f"{case}: the EMA update was recorded by autograd"
            torch.testing.assert_close(p, 0.9 * o + 0.1 * q.detach(), rtol=1e-5, atol=1e-6)
    method.training_step(batch, epoch).loss.backward()   # the next step's graph is its own


def test_a_soft_terms_teacher_gets_no_gradient():
    """KL(softmax(t / T) || softmax(s / T)) T^2, batch mean: d/ds = T (softmax(s / T) - softmax(t / T)) / n,
    and nothing for the teacher."""
    g = torch.Generator().manual_seed(6)
    s = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    T = 3.0
    soft_kl(s, t, T).backward()
    assert t.grad is None, "the teacher got a gradient"
    want = T * (torch.softmax(s.detach() / T, 1) - torch.softmax(t.detach() / T, 1)) / 4
    torch.testing.assert_close(s.grad, want, rtol=1e-10, atol=1e-12)


# -- two workers: the backward of the gathered embeddings ------------------------------------------

# methods that gather with gradient and that test_ray_train's two-worker comparison leaves out
TWO_RANK_CASES = {"barlow_twins": ("barlow_twins", 2, {}), "supcon": ("supcon", 2, {}),
                  "simclr_multi_crop": ("simclr", 4, {}), "simclr_attn_multi_crop": ("simclr_attn", 4, {}),
                  "mcl_supervised": ("mcl", 2, {"method.mode": "supervised", "method.logit_distill": True,
                                                  "method.alpha": 1.0, "method.beta": 1.0}),
                  "spcl": ("spcl", 2, {})}
N2, SAMPLES2 = 8, 24
INDEX2 = torch.tensor([5, 11, 2, 17, 8, 0, 23, 14])
LABEL2 = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0])      # every label twice on each worker (MCL's anchors)
# SPCL's pairs are drawn per worker; with these prototypes the two workers' pairs are the whole
# batch's pairs: (2, 3) and (0, 1) on worker 0, (6, 7) and (4, 5) on worker 1
PSEUDO2 = torch.tensor([0, 0, 1, 3, 5, 5, 2, 4])


def _gathered_loss(y: torch.Tensor, rank: int) -> torch.Tensor:
    """Worker ``rank``'s loss of the gathered rows: a different function of every row on each worker."""
    w = torch.randn(y.shape[1], 3, generator=torch.Generator().manual_seed(10 + rank), dtype=y.dtype)
    return torch.tanh(y @ w).pow(2).sum() + (rank + 1) * y[rank].pow(3).sum()


def _gathered_rows(world: int) -> torch.Tensor:
    return torch.randn(world * 3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def _gather_case(rank: int, world: int) -> dict:
    """Worker ``rank`` gathers its 3 rows and adds a local branch ``a = 1.5 b`` (b = 0) to the
    gathered rows before its loss: the sum hands the gathered rows and ``a`` one gradient tensor,
    and ``a``'s backward runs after the gather's (it was built before it)."""
    x = _gathered_rows(world)[rank * 3:(rank + 1) * 3].clone().requires_grad_()
    b = torch.zeros(world * 3, 4, dtype=torch.float64, requires_grad=True)
    a = 1.5 * b
    y = dist.gather_with_grad(x)
    _gathered_loss(y + a, rank).backward()
    return {"gathered": y.detach(), "grad": x.grad, "local_branch_grad": b.grad}


def _rank_step(case: str, rank: int, world: int) -> dict:
    """Worker ``rank``'s share of the global batch through ``training_step``; the loss and the
    gradients averaged over workers (DDP's averaging), BatchNorm on its running statistics."""
    name, views, extra = TWO_RANK_CASES[case]
    method = _method(name, SAMPLES2, **{"data.batch_size": N2 // world, **_multi_crop(views), **extra})
    method.train()
    for m in method.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    if name == "spcl":
        pseudo = torch.zeros(SAMPLES2, dtype=torch.long)
        pseudo[INDEX2] = PSEUDO2
        _cluster(method, pseudo)
    full = _batch(views, INDEX2, LABEL2, seed=3)
    n = N2 // world
    part = slice(rank * n, (rank + 1) * n)
    batch = Batch([v[part] for v in full.views], full.index[part], full.label[part])
    out = method.training_step(batch, 0)
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}
    loss = out.loss.detach().clone()
    if world > 1:
        for g in [*grads.values(), loss]:
            tdist.all_reduce(g)
            g /= world
    return {"loss": loss, "grads": grads}


def _every_case(rank: int, world: int) -> dict:
    return {"gather": _gather_case(rank, world), **{c: _rank_step(c, rank, world) for c in TWO_RANK_CASES}}


@pytest.fixture(scope="module")
def two_rank_gradients(tmp_path_factory):
    return on_gloo_ranks(_every_case, tmp_path_factory.mktemp("gather_grad"))


def test_gathered_gradient_is_the_global_loss_gradient_of_the_local_slice(two_rank_gradients):
    """``gather_with_grad``: rows in rank order; the gradient on worker r's input is slice r of
    the gradient of the sum of the workers' losses (the global mean loss times the world size).
    The sum over workers is the gather's own: a local branch that shares the incoming gradient
    tensor gets its worker's gradient, not the sum."""
    x_all = _gathered_rows(2)
    per_worker = []
    for rank in range(2):
        y = x_all.clone().requires_grad_()
        _gathered_loss(y, rank).backward()
        per_worker.append(y.grad)
    for rank, results in enumerate(two_rank_gradients):
        got = results["gather"]
        assert torch.equal(got["gathered"], x_all)
        own = (per_worker[0] + per_worker[1])[rank * 3:(rank + 1) * 3]
        torch.testing.assert_close(got["grad"], own, rtol=1e-12, atol=1e-12,
                                   msg=lambda m, rank=rank: f"rank {rank}, the gathered input: {m}")
        torch.testing.assert_close(got["local_branch_grad"], 1.5 * per_worker[rank], rtol=1e-12, atol=1e-12,
                                   msg=lambda m, rank=rank: f"rank {rank}, the local branch: {m}")


@pytest.mark.parametrize("case", list(TWO_RANK_CASES))
def test_two_workers_match_one_worker(case, two_rank_gradients):
    """Loss and DDP-averaged gradients of two workers, each with half of the batch, are the
    one-worker step's on the whole batch."""
    if case == "spcl":   # what makes the comparison valid: the workers' pairs are the whole batch's
        whole, first_half, second_half = (prototype_pairs(p) for p in (PSEUDO2, PSEUDO2[:4], PSEUDO2[4:]))
        for w, a, b in zip(whole, first_half, second_half):
            assert w.tolist() == a.tolist() + (b + 4).tolist()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                     # the workers' float reductions
    try:
        ref = _rank_step(case, 0, 1)
    finally:
        torch.set_num_threads(threads)
    for rank, results in enumerate(two_rank_gradients):
        got = results[case]
        torch.testing.assert_close(got["loss"], ref["loss"], atol=1e-5, rtol=1e-5)
        assert got["grads"].keys() == ref["grads"].keys()
        for name, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, name=name, rank=rank: f"{case} {name} rank {rank}: {m}")
