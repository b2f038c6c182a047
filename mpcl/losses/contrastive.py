"""InfoNCE / NT-Xent and the graph-attention variant (SimCLR-Attn).

Layout: a worker holds ``2n`` normalised embeddings ``[z1; z2]`` (view 1 of its n samples,
then view 2). Keys are the embeddings of every worker concatenated in rank order, so
anchor ``j`` of rank ``r`` sits at key ``r * 2n + j`` and its positive at
``r * 2n + (j + n) % 2n``; with one worker keys are the anchors themselves.
"""

from __future__ import annotations

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
    logits = anchors @ keys.T / temperature
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_index] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    pos = logits[rows, positive_index]
    lse = torch.logsumexp(logits, dim=1)
    return pos, lse


def nt_xent(anchors: torch.Tensor, keys: torch.Tensor, self_index: torch.Tensor,
            positive_index: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE over the local anchors (SimCLR's NT-Xent)."""
    pos, lse = contrastive_terms(anchors, keys, self_index, positive_index, temperature)
    return (lse - pos).mean()


@torch.no_grad()
def attention_weights(h_anchor: torch.Tensor, h_positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """Graph-attention weights over all anchors of the (global) batch, averaging 1.

    w_i = N * softmax_i(cos(h_i, h_p(i)) / temperature), from backbone features (no gradient):
    pairs whose two views already agree get more weight in the alignment update.
    """
    cos = F.cosine_similarity(h_anchor.float(), h_positive.float(), dim=1)
    return torch.softmax(cos / temperature, dim=0) * cos.shape[0]


def attention_weighted_nt_xent(pos: torch.Tensor, lse: torch.Tensor, weights: torch.Tensor,
                               attention_weight: float) -> torch.Tensor:
    """mean_i [ -((1 - a) + a * w_i) * pos_i + lse_i ].

    Only the positive (alignment) term of each anchor is weighted; the denominator (the
    uniformity term) is not. With a = 0 this is exactly NT-Xent.
    """
    c = (1.0 - attention_weight) + attention_weight * weights
    return (lse - c * pos).mean()
