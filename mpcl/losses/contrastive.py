"""InfoNCE / NT-Xent and the graph-attention variant (SimCLR-Attn).

Layout: a worker holds ``2n`` normalised embeddings ``[z1; z2]`` (view 1 of its n samples,
then view 2). Keys are the embeddings of every worker concatenated in rank order, so
anchor ``j`` of rank ``r`` sits at key ``r * 2n + j`` and its positive at
``r * 2n + (j + n) % 2n``; with one worker keys are the anchors themselves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pair_indices(n: int, rank: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(self_index, positive_index) of the 2n local anchors among the gathered keys."""
    local = torch.arange(2 * n, device=device)
    offset = rank * 2 * n
    return offset + local, offset + (local + n) % (2 * n)


def contrastive_terms(
    anchors: torch.Tensor,
    keys: torch.Tensor,
    self_index: torch.Tensor,
    positive_index: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor positive logit s(i, p(i)) / T and log-sum-exp over every key but itself.

    ``anchors`` (m, d) and ``keys`` (N, d) are L2-normalised. The InfoNCE term of anchor i is
    ``lse[i] - pos[i]``; the positive is part of the denominator (NT-Xent).
    """
    logits = _logits_without_self(anchors, keys, self_index, temperature)
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    pos = logits[rows, positive_index]
    lse = torch.logsumexp(logits, dim=1)
    return pos, lse


def _logits_without_self(anchors: torch.Tensor, keys: torch.Tensor, self_index: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """s(i, k) / T for every anchor and key, -inf where the key is the anchor itself."""
    logits = anchors @ keys.T / temperature
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_index] = True
    return logits.masked_fill(is_self, -math.inf)


def mixed_positive_terms(
    anchors: torch.Tensor,
    keys: torch.Tensor,
    self_index: torch.Tensor,
    positive_index: torch.Tensor,
    memory: torch.Tensor,
    bank_mix: float,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``contrastive_terms`` with each anchor's positive key aggregated with a memory of its
    sample (multi-stage aggregation, as SimSiam-Multi aggregates its target):

        k_i = normalize((1 - b) * keys[p(i)] + b * sg(memory_i))

    rows whose memory is not ``valid`` keep k_i = keys[p(i)]. The positive logit z_i . k_i / T
    takes the place of s(i, p(i)) / T in the numerator and in the log-sum-exp, so each term is
    still a cross-entropy over the keys; the negatives are unchanged. The gradient reaches
    keys[p(i)] through k_i and never the memory.
    """
    positive = keys[positive_index]
    mixed = F.normalize((1.0 - bank_mix) * positive + bank_mix * memory.detach().to(positive.dtype), dim=1)
    if valid is not None:
        mixed = torch.where(valid[:, None], mixed, positive)
    pos = (anchors * mixed).sum(dim=1) / temperature
    logits = _logits_without_self(anchors, keys, self_index, temperature)
    logits = logits.scatter(1, positive_index[:, None], pos[:, None])
    return pos, torch.logsumexp(logits, dim=1)


def nt_xent(anchors: torch.Tensor, keys: torch.Tensor, self_index: torch.Tensor,
            positive_index: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE over the local anchors (SimCLR's NT-Xent)."""
    pos, lse = contrastive_terms(anchors, keys, self_index, positive_index, temperature)
    return (lse - pos).mean()


ATTENTION_TARGETS = ("loss", "alignment")


@torch.no_grad()
def attention_weights(h_anchor: torch.Tensor, h_positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """Graph-attention weights over all anchors of the (global) batch, averaging 1.

    w_i = N * softmax_i(cos(h_i, h_p(i)) / temperature), from backbone features (no gradient):
    pairs whose two views already agree get more weight. The released code's weights,
    exp(cos + 1) divided by their sum, are this at temperature 1 (the +1 cancels).
    """
    dtype = torch.promote_types(h_anchor.dtype, torch.float32)
    cos = F.cosine_similarity(h_anchor.to(dtype), h_positive.to(dtype), dim=1)
    return torch.softmax(cos / temperature, dim=0) * cos.shape[0]


def attention_weighted_nt_xent(pos: torch.Tensor, lse: torch.Tensor, weights: torch.Tensor,
                               attention_weight: float, target: str = "loss",
                               global_weight_mean: torch.Tensor | float | None = None) -> torch.Tensor:
    """SimCLR-Attn from per-anchor (pos, lse) and attention weights, c_i = (1 - a) + a * w_i.

    ``target="loss"`` (the released GRAPH-ATTENTION form): every anchor's whole InfoNCE term
    l_i = lse_i - pos_i is weighted, sum_i c_i l_i / sum_i c_i over the global batch. Returned
    as mean_local(c_i l_i) / mean_global(c_i), so that the mean over workers (DDP's gradient
    averaging) is the global ratio; ``global_weight_mean`` is the mean of w over every worker's
    anchors (default: these anchors are the whole batch).
    ``target="alignment"``: only the positive logit is weighted, mean_i [lse_i - c_i pos_i]
    (a variant; the released code did not run it).
    With a = 0 both are exactly NT-Xent: c = 1 and the normaliser is 1.
    """
    a = attention_weight
    c = (1.0 - a) + a * weights
    if target == "alignment":
        return (lse - c * pos).mean()
    if target != "loss":
        raise ValueError(f"attention target {target!r}: expected one of {', '.join(ATTENTION_TARGETS)}")
    w_mean = weights.mean() if global_weight_mean is None else global_weight_mean
    return (c * (lse - pos)).mean() / ((1.0 - a) + a * w_mean)


def graph_attention_nt_xent(z: torch.Tensor, h: torch.Tensor, temperature: float, attention_weight: float,
                            attention_temperature: float, target: str = "loss") -> torch.Tensor:
    """SimCLR-Attn on one worker's two views: ``z`` = normalised [z1; z2], ``h`` = backbone
    features [h1; h2] (used detached). The composition the method runs, without gathering."""
    n = z.shape[0] // 2
    self_idx, pos_idx = pair_indices(n, 0, z.device)
    pos, lse = contrastive_terms(z, z, self_idx, pos_idx, temperature)
    w = attention_weights(h.detach(), h.detach().roll(n, 0), attention_temperature)
    return attention_weighted_nt_xent(pos, lse, w.to(pos.dtype), attention_weight, target)
