"""Contrastive losses with several positives per anchor: supervised contrastive (SupCon,
Khosla et al. 2020, the "L_out" form) and multi-crop InfoNCE (positives by sample index).

Layout as in ``contrastive``: ``anchors`` are a worker's m local embeddings, ``keys`` the
embeddings of every worker in rank order; ``self_index[i]`` is anchor i's own row among the
keys (excluded from numerator and denominator). Two rows are positives when their ids are
equal: class labels for SupCon, dataset indices for multi-crop SimCLR.
"""

from __future__ import annotations

import math

import torch


def multi_positive_terms(anchors: torch.Tensor, keys: torch.Tensor, anchor_ids: torch.Tensor,
                         key_ids: torch.Tensor, self_index: torch.Tensor, temperature: float
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor: the mean positive logit, the log-sum-exp over every key but itself, and the
    number of positives. ``lse - pos_mean`` is -mean_{p in P(i)} log softmax_i(p)."""
    logits = anchors @ keys.T / temperature
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_index] = True
    positive = (anchor_ids[:, None] == key_ids[None, :]) & ~is_self
    lse = torch.logsumexp(logits.masked_fill(is_self, -math.inf), dim=1)
    count = positive.sum(1)
    pos_mean = (logits * positive).sum(1) / count.clamp(min=1)
    return pos_mean, lse, count


def supcon_loss(anchors: torch.Tensor, keys: torch.Tensor, anchor_ids: torch.Tensor, key_ids: torch.Tensor,
                self_index: torch.Tensor, temperature: float) -> torch.Tensor:
    """-mean_i mean_{p in P(i)} log softmax_i(p), over the anchors that have a positive."""
    pos, lse, count = multi_positive_terms(anchors, keys, anchor_ids, key_ids, self_index, temperature)
    has = count > 0
    return ((lse - pos) * has).sum() / has.sum().clamp(min=1)


def multi_positive_cosine(h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per row: the mean cosine similarity to the other rows with the same id (0 when none).
    With two views per id this is cos(h_i, h_p(i)), the graph-attention score."""
    hn = torch.nn.functional.normalize(h.float(), dim=1)
    sim = hn @ hn.T
    same = ids[:, None] == ids[None, :]
    same.fill_diagonal_(False)
    return (sim * same).sum(1) / same.sum(1).clamp(min=1)
