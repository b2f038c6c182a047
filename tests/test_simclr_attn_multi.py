"""SimCLR-Attn-Multi, the three-knob method: the mixed-positive InfoNCE against a plain loop
in float64, and the method bit for bit equal to SimCLR-Attn at bank mix 0 and to SimCLR at
attention weight 0 too (loss and every gradient). SimCLR-Attn's step against the released
loss, with two views and with multi-crop."""

import math

import pytest
import torch
import torch.nn.functional as F

from mpcl.config import ConfigError
from mpcl.config.compose import declared_only, load
from mpcl.data.batch import Batch
from mpcl.losses import attention_weighted_nt_xent, attention_weights, mixed_positive_terms, pair_indices
from mpcl.methods import build_method
from tests.helpers.runs import tiny_overrides
from tests.helpers.references import gen, released_attention_loss, small_method

N_SAMPLES = 16


def reference_three_knob_loss(u, h, memory, valid, T, a, attention_temperature, b):
    """A loop over the 2n anchors of [view 1; view 2]: z = u / |u|; the positive key of anchor i
    is k_i = m_i / |m_i| with m_i = (1 - b) z_p(i) + b memory_i (memory without gradient) where
    its memory is valid, else z_p(i); l_i = -log exp(z_i.k_i/T) / (exp(z_i.k_i/T) +
    sum_{k != i, p(i)} exp(z_i.z_k/T)); c_i = (1 - a) + a * 2n softmax_i(cos(h_i, h_p(i)) / t);
    loss = sum c_i l_i / sum c_i."""
    N = u.shape[0]
    n = N // 2
    z = [u[i] / u[i].norm() for i in range(N)]
    cos = [float(h[i] @ h[(i + n) % N] / (h[i].norm() * h[(i + n) % N].norm())) for i in range(N)]
    e = [math.exp((cs - max(cos)) / attention_temperature) for cs in cos]   # softmax, shifted
    c = [(1 - a) + a * N * x / sum(e) for x in e]
    total = 0.0
    for i in range(N):
        p = (i + n) % N
        if valid[i]:
            m = (1 - b) * z[p] + b * memory[i].detach()
            key = m / m.norm()
        else:
            key = z[p]
        positive = z[i] @ key / T
        logits = [positive] + [z[i] @ z[k] / T for k in range(N) if k not in (i, p)]
        total = total + c[i] * (torch.logsumexp(torch.stack(logits), 0) - positive)
    return total / sum(c)


@pytest.mark.parametrize("T, a, t, b", [(0.5, 1.0, 1.0, 0.5), (0.2, 0.6, 0.5, 0.3), (1.0, 0.0, 1.0, 0.9)])
def test_mixed_positive_loss_matches_a_plain_loop_with_gradients(T, a, t, b):
    g = torch.Generator().manual_seed(11)
    n = 5
    u = torch.randn(2 * n, 6, generator=g, dtype=torch.float64)
    h = torch.randn(2 * n, 7, generator=g, dtype=torch.float64)
    memory = F.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1).repeat(2, 1)
    valid = torch.tensor([True, False, True, True, False]).repeat(2)
    u_ref, mem_ref = u.clone().requires_grad_(), memory.clone().requires_grad_()
    expected = reference_three_knob_loss(u_ref, h, mem_ref, valid, T, a, t, b)
    expected.backward()

    u_got, mem_got = u.clone().requires_grad_(), memory.clone().requires_grad_()
    z = F.normalize(u_got, dim=1)
    s, p = pair_indices(n, 0)
    pos, lse = mixed_positive_terms(z, z, s, p, mem_got, b, T, valid)
    w = attention_weights(h, h.roll(n, 0), t)
    got = attention_weighted_nt_xent(pos, lse, w, a)
    got.backward()
    assert abs(got.item() - expected.item()) < 1e-12
    assert torch.allclose(u_got.grad, u_ref.grad, atol=1e-12, rtol=0)
    assert u_got.grad.abs().max() > 1e-3
    assert mem_got.grad is None                      # the bank never gets a gradient


def _method(name, **extra):
    cfg = load(None, declared_only(name, tiny_overrides("/tmp/unused", name, **{   # the knobs it has
        "method.temperature": 0.3, "method.attention_weight": 0.7, "method.attention_temperature": 0.001,
        "method.bank_warmup_epochs": 0, **extra})))
    torch.manual_seed(0)
    method = build_method(cfg, 10, N_SAMPLES)
    method.train()
    for m in method.modules():     # BN on its running statistics: the same forward every call
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return method


def _batch():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 32, 32, generator=g)
    x2 = (x + 0.3 * torch.rand(6, 3, 32, 32, generator=g)).clamp(0, 1)
    return Batch([x, x2], torch.tensor([1, 4, 5, 9, 12, 15]), torch.zeros(6).long())


def _filled_bank(method):
    """A snapshot from a previous epoch holding most samples (index 5 never seen)."""
    g = torch.Generator().manual_seed(4)
    method.bank.snapshot.copy_(F.normalize(torch.randn(method.bank.snapshot.shape, generator=g), dim=1))
    method.bank.snapshot_valid.fill_(True)
    method.bank.snapshot_valid[5] = False


def _loss_and_grads(method, epoch):
    method.zero_grad(set_to_none=True)
    out = method.training_step(_batch(), epoch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    return out, grads


def _assert_bitwise(a, b):
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert torch.equal(out_a.loss, out_b.loss)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 4
    for name, g in grads_a.items():
        assert torch.equal(g, grads_b[name]), name


def _pair(reference_name, reference_extra, multi_extra):
    ref = _method(reference_name, **reference_extra)
    multi = _method("simclr_attn_multi", **multi_extra)
    missing, unexpected = multi.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("bank.") for k in missing)
    _filled_bank(multi)
    return ref, multi


def test_bank_mix_zero_is_simclr_attn_bit_for_bit():
    ref, multi = _pair("simclr_attn", {}, {"method.bank_mix": 0.0})
    _assert_bitwise(_loss_and_grads(ref, 1), _loss_and_grads(multi, 1))      # epoch 1: past warm-up
    assert (multi.training_step(_batch(), 1).metrics["train/attn_weight_max"]
            - multi.training_step(_batch(), 1).metrics["train/attn_weight_min"]) > 0.1   # weights matter here


def test_attention_and_bank_mix_zero_is_simclr_bit_for_bit():
    ref, multi = _pair("simclr", {}, {"method.bank_mix": 0.0, "method.attention_weight": 0.0})
    _assert_bitwise(_loss_and_grads(ref, 1), _loss_and_grads(multi, 1))


def test_warm_up_epochs_are_simclr_attn_and_then_the_bank_mixes():
    ref, multi = _pair("simclr_attn", {}, {"method.bank_mix": 0.4, "method.bank_warmup_epochs": 1})
    _assert_bitwise(_loss_and_grads(ref, 1), _loss_and_grads(multi, 1))      # epoch 1 <= warm-up: plain
    mixed = multi.training_step(_batch(), 2).loss                            # epoch 2: mixed
    assert abs(mixed.item() - ref.training_step(_batch(), 2).loss.item()) > 1e-3
    # the mixed loss is the reference formula on the method's own features and bank
    batch = _batch()
    with torch.no_grad():
        h, z = multi.encode_views(batch)
    values, valid = multi.bank.read(batch.index)
    want = reference_three_knob_loss(z.double(), h.double(), values.double().repeat(2, 1), valid.repeat(2),
                                     0.3, 0.7, 0.001, 0.4)
    assert multi.ssl_loss(batch, 2).loss.item() == pytest.approx(want.item(), abs=1e-5)


def test_the_bank_holds_view_twos_normalised_projection_of_the_epoch():
    multi = _method("simclr_attn_multi", **{"method.bank_mix": 0.5})
    batch = _batch()
    multi.training_step(batch, 0)
    multi.on_epoch_end(0)
    values, valid = multi.bank.read(batch.index)
    with torch.no_grad():
        z2 = F.normalize(multi.projector(multi.backbone(batch.views[1])), dim=1)
    assert valid.all() and int(multi.bank.snapshot_valid.sum()) == 6
    torch.testing.assert_close(values, z2, atol=1e-6, rtol=1e-5)
    assert {"bank.snapshot", "bank.snapshot_valid", "bank.snapshot_epoch"} <= multi.state_dict().keys()


def test_multi_crop_is_refused():
    with pytest.raises(ConfigError, match="data.num_small_crops=2.*simclr_attn_multi"):
        load(None, ["method.name=simclr_attn_multi", "data.loader=torch", "data.num_small_crops=2"])


def test_the_three_knob_sweep_searches_all_knobs_from_simclr_and_simclr_attn():
    from pathlib import Path

    from mpcl.launch.sweep_spec import load_sweep

    spec = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "fmnist_simclr_attn_multi.yaml")
    assert {"method.temperature", "method.attention_weight", "method.bank_mix"} <= spec.space.keys()
    knobs = {(spec.config(p).method.attention_weight, spec.config(p).method.bank_mix) for p in spec.points}
    assert {(0.0, 0.0), (1.0, 0.0)} <= knobs                     # plain SimCLR, the released SimCLR-Attn
    m = spec.config(spec.points[0]).method
    assert (m.name, m.attention_temperature, m.attention_target, spec.config(spec.points[0]).data.dataset) == \
        ("simclr_attn_multi", 1.0, "loss", "fashion_mnist")
    # the bank mixes before ASHA first compares trials, so b acts in every comparison
    assert m.bank_warmup_epochs + 1 < spec.scheduler["grace_period"] <= spec.epochs


# -- SimCLR-Attn: the method's step against the released loss -----------------------------------

def _attn_method(**extra):
    cfg = small_method("simclr_attn", **{"method.attention_weight": 0.7, "method.attention_temperature": 0.5,
                                         "method.temperature": 0.3, **extra})
    torch.manual_seed(0)
    method = build_method(cfg, 10, 40)
    method.eval()                                   # BN in eval mode: the same forward twice
    return method


def test_simclr_attn_step_is_the_released_loss():

    # the small CNN's features of random images are nearly collinear: a low attention
    # temperature makes the weights differ between anchors
    method = _attn_method(**{"method.attention_temperature": 0.001})
    g = gen(21)
    x = torch.rand(6, 3, 32, 32, generator=g)
    batch = Batch([x, (x + 0.3 * torch.rand(6, 3, 32, 32, generator=g)).clamp(0, 1)], torch.arange(6),
                  torch.zeros(6).long())
    h, z = method.encode_views(batch)
    want = released_attention_loss(z.detach().double(), h.detach().double(), 0.3, 0.7, 0.001)
    out = method.ssl_loss(batch, 0)
    assert out.metrics["train/attn_weight_max"] - out.metrics["train/attn_weight_min"] > 0.3
    assert abs(out.loss.item() - want.item()) < 1e-5


def test_simclr_attn_multi_crop_weights_every_crop():
    """Every crop is an anchor with its multi-positive InfoNCE term l_i; w = N softmax over all
    crops of the mean cosine to its positives / t; loss = sum c_i l_i / sum c_i."""
    method = _attn_method(**{"data.num_small_crops": 2, "data.small_crop_size": 16, "data.loader": "torch"})
    g = gen(22)
    n, a, t, T = 5, 0.7, 0.5, 0.3
    views = [torch.rand(n, 3, 32, 32, generator=g) for _ in range(2)] + \
            [torch.rand(n, 3, 16, 16, generator=g) for _ in range(2)]
    batch = Batch(views, torch.arange(n) + 7, torch.zeros(n).long())
    h, z = (x.detach().double() for x in method.encode_views(batch))
    N = 4 * n
    ids = [i % n for i in range(N)]
    cos, loss_terms = [], []
    for i in range(N):
        positives = [p for p in range(N) if p != i and ids[p] == ids[i]]
        cos.append(sum(float(F.cosine_similarity(h[i:i + 1], h[p:p + 1])) for p in positives) / len(positives))
        lse = math.log(sum(math.exp(float(z[i] @ z[k]) / T) for k in range(N) if k != i))
        loss_terms.append(sum(lse - float(z[i] @ z[p]) / T for p in positives) / len(positives))
    e = [math.exp(c / t) for c in cos]
    c = [(1 - a) + a * N * x / sum(e) for x in e]
    want = sum(ci * li for ci, li in zip(c, loss_terms)) / sum(c)
    assert method.ssl_loss(batch, 0).loss.item() == pytest.approx(want, abs=1e-5)
