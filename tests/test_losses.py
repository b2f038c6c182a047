"""Losses against direct reference computations on fixed tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from mpcl.losses import (
    attention_weighted_nt_xent,
    barlow_twins_loss,
    cross_correlation,
    multi_positive_cosine,
    standardize,
    supcon_loss,
    attention_weights,
    bank_target,
    contrastive_terms,
    graph_attention_nt_xent,
    negative_cosine,
    nt_xent,
    pair_indices,
    symmetric_negative_cosine,
)
from tests.helpers.references import released_attention_loss


def fixed(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(2 * n, d, generator=g, dtype=torch.float64), dim=1)
    h = torch.randn(2 * n, 7, generator=g, dtype=torch.float64)
    return z, h


def reference_infonce_terms(z, T):
    """Loop over anchors: -log exp(s_ip/T) / sum_{k != i} exp(s_ik/T), views [z1; z2]."""
    N = z.shape[0]
    n = N // 2
    pos_terms, lse_terms = [], []
    for i in range(N):
        p = (i + n) % N
        sims = [float(z[i] @ z[k]) / T for k in range(N) if k != i]
        pos_terms.append(float(z[i] @ z[p]) / T)
        lse_terms.append(math.log(sum(math.exp(s) for s in sims)))
    return torch.tensor(pos_terms, dtype=z.dtype), torch.tensor(lse_terms, dtype=z.dtype)


@pytest.mark.parametrize("T", [0.1, 0.5, 1.0])
def test_nt_xent_matches_reference(T):
    z, _ = fixed()
    self_idx, pos_idx = pair_indices(z.shape[0] // 2, rank=0)
    pos, lse = reference_infonce_terms(z, T)
    expected = (lse - pos).mean()
    assert torch.allclose(nt_xent(z, z, self_idx, pos_idx, T), expected, atol=1e-10)


def test_pair_indices_for_rank_blocks():
    self_idx, pos_idx = pair_indices(3, rank=2)
    assert self_idx.tolist() == [12, 13, 14, 15, 16, 17]
    assert pos_idx.tolist() == [15, 16, 17, 12, 13, 14]


def test_gathered_keys_give_the_single_worker_loss():
    """Two workers' local anchors against gathered keys average to the one-worker loss."""
    g = torch.Generator().manual_seed(1)
    z1, z2 = (F.normalize(torch.randn(8, 4, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    T = 0.3
    whole = torch.cat([z1, z2])
    s, p = pair_indices(8, 0)
    single = nt_xent(whole, whole, s, p, T)
    local = [torch.cat([z1[:4], z2[:4]]), torch.cat([z1[4:], z2[4:]])]
    keys = torch.cat(local)
    per_rank = [nt_xent(local[r], keys, *pair_indices(4, r), T) for r in range(2)]
    assert torch.allclose(sum(per_rank) / 2, single, atol=1e-12)


def test_attention_weights_reference():
    z, h = fixed()
    n = h.shape[0] // 2
    h_pos = torch.cat([h[n:], h[:n]])
    tau = 0.7
    cos = torch.tensor([float(F.cosine_similarity(h[i:i + 1], h_pos[i:i + 1])) for i in range(2 * n)])
    expected = torch.exp(cos / tau) / torch.exp(cos / tau).sum() * 2 * n
    w = attention_weights(h, h_pos, tau)
    assert torch.allclose(w.double(), expected.double(), atol=1e-6)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)


def test_attention_weight_zero_is_exactly_nt_xent():
    z, h = fixed()
    n = z.shape[0] // 2
    s, p = pair_indices(n, 0)
    pos, lse = contrastive_terms(z, z, s, p, 0.5)
    w = attention_weights(h, torch.cat([h[n:], h[:n]]), 1.0).double()
    assert torch.equal(attention_weighted_nt_xent(pos, lse, w, 0.0), nt_xent(z, z, s, p, 0.5))


@pytest.mark.parametrize("a, attention_temperature", [(1.0, 1.0), (0.6, 0.5), (0.3, 2.0)])
def test_attention_loss_matches_the_released_form_with_gradients(a, attention_temperature):
    g = torch.Generator().manual_seed(7)
    u = torch.randn(12, 5, generator=g, dtype=torch.float64)
    h = torch.randn(12, 7, generator=g, dtype=torch.float64)
    u_ref = u.clone().requires_grad_()
    expected = released_attention_loss(u_ref, h, 0.5, a, attention_temperature)
    expected.backward()
    u_got = u.clone().requires_grad_()
    got = graph_attention_nt_xent(F.normalize(u_got, dim=1), h, 0.5, a, attention_temperature)
    got.backward()
    assert abs(got.item() - expected.item()) < 1e-6
    assert torch.allclose(u_got.grad, u_ref.grad, atol=1e-6, rtol=0)
    assert u_got.grad.abs().max() > 1e-3   # a gradient to compare


def test_attention_alignment_target_weights_only_the_positive_logit():
    z, h = fixed()
    n = z.shape[0] // 2
    s, p = pair_indices(n, 0)
    pos_ref, lse_ref = reference_infonce_terms(z, 0.5)
    w = attention_weights(h, torch.cat([h[n:], h[:n]]), 1.0)
    assert w.dtype == torch.float64
    a = 0.6
    expected = (lse_ref - ((1 - a) + a * w) * pos_ref).mean()
    pos, lse = contrastive_terms(z, z, s, p, 0.5)
    got = attention_weighted_nt_xent(pos, lse, w, a, "alignment")
    assert torch.allclose(got, expected, atol=1e-10)
    released = attention_weighted_nt_xent(pos, lse, w, a)
    assert abs(released.item() - float(released_attention_loss(z, h, 0.5, a, 1.0))) < 1e-10
    assert abs(got.item() - released.item()) > 1e-4


def test_attention_loss_over_workers_is_the_global_ratio():
    """Per-worker losses with the global weight mean average to the one-worker loss."""
    z, h = fixed(n=8, seed=3)
    n, T, a = 8, 0.5, 0.8
    s, p = pair_indices(n, 0)
    pos, lse = contrastive_terms(z, z, s, p, T)
    w = attention_weights(h, h.roll(n, 0), 1.0)
    single = attention_weighted_nt_xent(pos, lse, w, a)
    halves = [torch.cat([torch.arange(r * 4, r * 4 + 4), torch.arange(n + r * 4, n + r * 4 + 4)]) for r in range(2)]
    # not the mean of per-worker ratios with local normalisers (the weights differ between workers)
    per_rank = [attention_weighted_nt_xent(pos[i], lse[i], w[i], a, global_weight_mean=w.mean()) for i in halves]
    assert torch.allclose(sum(per_rank) / 2, single, atol=1e-12)
    local_ratio = [attention_weighted_nt_xent(pos[i], lse[i], w[i], a) for i in halves]
    assert not torch.allclose(sum(local_ratio) / 2, single, atol=1e-6)


def test_attention_weights_carry_no_gradient():
    h = torch.randn(8, 3, requires_grad=True)
    w = attention_weights(h, h.roll(4, 0), 1.0)
    assert not w.requires_grad


def test_negative_cosine_reference_and_stop_gradient():
    g = torch.Generator().manual_seed(2)
    p, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g, requires_grad=True)
    expected = -torch.stack([p[i] @ t[i] / (p[i].norm() * t[i].norm()) for i in range(5)]).mean()
    loss = negative_cosine(p.requires_grad_(), t)
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert t.grad is None and p.grad is not None


def test_symmetric_negative_cosine():
    g = torch.Generator().manual_seed(3)
    p1, p2, z1, z2 = (torch.randn(4, 6, generator=g) for _ in range(4))
    expected = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
    assert torch.equal(symmetric_negative_cosine(p1, p2, z2, z1), expected)


def test_bank_target_at_zero_mix_is_exactly_plain_simsiam():
    g = torch.Generator().manual_seed(4)
    z, bank = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert torch.equal(bank_target(z, bank, 0.0), z)


def test_bank_target_mixes_and_respects_validity():
    z, bank = torch.ones(3, 2), torch.full((3, 2), 3.0)
    valid = torch.tensor([True, False, True])
    t = bank_target(z.requires_grad_(), bank, 0.5, valid)
    assert t.tolist() == [[2.0, 2.0], [1.0, 1.0], [2.0, 2.0]]
    assert not t.requires_grad


# -- cases the reference comparisons above do not reach ------------------------------------

def test_attention_loss_normalises_by_the_mean_weight_when_it_is_not_one():
    """Given weights (mean 1.5, not the softmax's 1): sum_i c_i l_i / sum_i c_i, c = 0.6 + 0.4 w."""
    pos = torch.tensor([1.0, 0.5, -0.2, 0.3], dtype=torch.float64)
    lse = torch.tensor([2.0, 1.5, 1.0, 1.2], dtype=torch.float64)
    w = torch.tensor([0.5, 1.0, 2.0, 2.5], dtype=torch.float64)
    c = 0.6 + 0.4 * w
    want = (c * (lse - pos)).sum() / c.sum()
    assert attention_weighted_nt_xent(pos, lse, w, 0.4) == pytest.approx(want.item(), rel=1e-12)
    # a global mean from other workers replaces the local one in the normaliser
    assert attention_weighted_nt_xent(pos, lse, w, 0.4, global_weight_mean=3.0) == \
        pytest.approx((c * (lse - pos)).mean().item() / (0.6 + 0.4 * 3.0), rel=1e-12)


def test_attention_target_unknown_is_one_line_naming_the_choices():
    pos, lse, w = torch.zeros(2), torch.ones(2), torch.ones(2)
    with pytest.raises(ValueError) as err:
        attention_weighted_nt_xent(pos, lse, w, 0.5, target="logits")
    assert str(err.value) == "attention target 'logits': expected one of loss, alignment"


def test_graph_attention_passes_its_target_on():
    z, h = fixed()
    for target in ("loss", "alignment"):
        self_idx, pos_idx = pair_indices(6, 0, z.device)
        pos, lse = contrastive_terms(z, z, self_idx, pos_idx, 0.5)
        w = attention_weights(h, h.roll(6, 0), 0.3)
        want = attention_weighted_nt_xent(pos, lse, w, 0.7, target)
        assert graph_attention_nt_xent(z, h, 0.5, 0.7, 0.3, target) == pytest.approx(want.item(), rel=1e-12)
    assert graph_attention_nt_xent(z, h, 0.5, 0.7, 0.3, "alignment") != \
        pytest.approx(graph_attention_nt_xent(z, h, 0.5, 0.7, 0.3, "loss").item(), rel=1e-6)


def test_supcon_averages_over_the_anchors_that_have_a_positive():
    """Anchor 0 (id 0) has one positive (key 1); anchor 1 (id 7) none: the loss is anchor 0's
    term alone, lse_0 - s_01 / T."""
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    keys = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    loss = supcon_loss(anchors, keys, torch.tensor([0, 7]), torch.tensor([0, 0, 1]), torch.tensor([0, 2]), 0.5)
    lse0 = math.log(math.exp(0.6 / 0.5) + math.exp(0.0))
    assert loss.item() == pytest.approx(lse0 - 0.6 / 0.5, rel=1e-12)


def test_multi_positive_cosine_is_the_mean_over_each_rows_same_id_rows():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [3.0, 3.0], [0.0, -1.0], [5.0, 5.0]])
    ids = torch.tensor([0, 0, 1, 1, 1, 2])
    r = math.sqrt(0.5)
    # id 0: one other row (cos 0); id 1: two others; id 2: none (0)
    want = [0.0, 0.0, (r + 0.0) / 2, (r - r) / 2, (0.0 - r) / 2, 0.0]
    assert multi_positive_cosine(h, ids).tolist() == pytest.approx(want, abs=1e-6)
    assert multi_positive_cosine(h[:2], ids[:2]).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    h2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert multi_positive_cosine(h2, torch.tensor([4, 4])).tolist() == pytest.approx([r, r], rel=1e-6)


def test_barlow_twins_defaults_lambda_and_eps():
    """Defaults lambda 5e-3 and eps 1e-5, checked where eps shows: per-dimension variance 1e-5."""
    g = torch.Generator().manual_seed(0)
    z1 = 3e-3 * torch.randn(16, 4, generator=g, dtype=torch.float64)
    z2 = z1 + 2e-3 * torch.randn(16, 4, generator=g, dtype=torch.float64)

    def bn(z):
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)

    c = bn(z1).T @ bn(z2) / 16
    off = c - torch.diag(torch.diagonal(c))
    want = ((1 - torch.diagonal(c)) ** 2).sum() + 5e-3 * (off ** 2).sum()
    assert barlow_twins_loss(z1, z2).item() == pytest.approx(want.item(), rel=1e-6)   # computed in float32
    assert torch.allclose(standardize(z1), bn(z1), rtol=1e-9, atol=0)
    assert torch.allclose(cross_correlation(z1, z2), c, rtol=1e-9, atol=0)
