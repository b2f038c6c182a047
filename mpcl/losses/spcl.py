"""Siamese Prototypical Contrastive Learning (Mo et al., BMVC 2021), as the reference
(stoneMo/SPCL, ``pretrain_cluster_metric``) trains it: a step sees B pairs of images (a, b),
each image in two views; half of the pairs share a prototype. Per step

  NT-Xent over the a images + NT-Xent over the b images                    (contrastive)
  + cluster_weight * sum over the 4 views of CE(classifier(h), pseudo-label)
  + metric_weight * (2 same-image BCE terms, target 1,
                     + 4 cross-image BCE terms, target 1 if the pair shares a prototype)

every term a mean over its B rows; the siamese head sees |h_x - h_y| of backbone features.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F

from mpcl.losses.contrastive import nt_xent, pair_indices


def prototype_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a batch of n samples into n // 2 disjoint pairs in the reference's proportions:
    the odd pair slots hold two samples of one label, the even slots two of different labels.
    Same-label pairs are taken round-robin over the labels (in batch order) while a label has
    two samples left; the remaining samples, sorted by label, are paired with the one half a
    list further on, which differs in label unless one label fills more than half of them. A
    batch too small for enough same-label pairs gets more different-label ones (the caller
    reads the truth from the labels). The batch order is random, so are the pairs.
    Returns (first, second) positions."""
    lab = labels.tolist()
    n_pairs = len(lab) // 2
    buckets: dict[int, deque[int]] = {}
    for i, label in enumerate(lab):
        buckets.setdefault(label, deque()).append(i)
    same: list[tuple[int, int]] = []
    grew = True
    while grew:                      # round-robin passes while a pass still finds a pair
        grew = False
        for bucket in buckets.values():
            if len(same) == n_pairs // 2:
                break
            if len(bucket) >= 2:
                same.append((bucket.popleft(), bucket.popleft()))
                grew = True
    rest = sorted((i for bucket in buckets.values() for i in bucket), key=lambda i: (lab[i], i))
    half = len(rest) // 2
    different = [(rest[i], rest[i + half]) for i in range(half)]
    # len(different) = n_pairs - len(same) >= the even slots: only odd slots can run out (of same pairs)
    pairs, s, d = [], iter(same), iter(different)
    for k in range(n_pairs):
        pair = next(s, None) if k % 2 else None
        pairs.append(next(d) if pair is None else pair)
    return (torch.tensor([a for a, _ in pairs], dtype=torch.long),
            torch.tensor([b for _, b in pairs], dtype=torch.long))


def prototype_ce(logits: torch.Tensor, pseudo_labels: torch.Tensor) -> torch.Tensor:
    """CE(classifier(h), pseudo-label), the mean over the rows."""
    return F.cross_entropy(logits, pseudo_labels)


def siamese_metric_loss(metric_head, h_a: torch.Tensor, h_b: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """The reference's MetricCriterion: ``h_a`` = [view 1; view 2] backbone features of the B
    first images, ``h_b`` of their partners, ``same`` (B,) 1.0 where a pair shares a prototype.
    BCE-with-logits of metric_head(|x - y|): (a1, a2) and (b1, b2) with target 1, then (a1, b1),
    (a1, b2), (a2, b1), (a2, b2) with target ``same``; the sum of the six means."""
    n = same.shape[0]
    a1, a2, b1, b2 = h_a[:n], h_a[n:], h_b[:n], h_b[n:]
    ones = torch.ones_like(same)

    def bce(x, y, target):
        return F.binary_cross_entropy_with_logits(metric_head((x - y).abs()).squeeze(1), target)

    return (bce(a1, a2, ones) + bce(b1, b2, ones)
            + bce(a1, b1, same) + bce(a1, b2, same) + bce(a2, b1, same) + bce(a2, b2, same))


def spcl_terms(z_a: torch.Tensor, z_b: torch.Tensor, h_a: torch.Tensor, h_b: torch.Tensor,
               logits_a: torch.Tensor, logits_b: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor,
               same: torch.Tensor, metric_head, temperature: float,
               keys_a: torch.Tensor | None = None, keys_b: torch.Tensor | None = None,
               rank: int = 0) -> dict[str, torch.Tensor]:
    """The three SPCL terms of B pairs at the reference's scales. Rows are [view 1; view 2] of
    the first images (``*_a``) and of their partners (``*_b``); ``z`` normalised projections,
    ``h`` backbone features, ``logits`` classifier outputs, ``labels`` (B,) pseudo-labels.
    ``keys_*``: the gathered ``z_*`` of every worker (default: one worker)."""
    n = same.shape[0]
    s, p = pair_indices(n, rank, z_a.device)
    nce = (nt_xent(z_a, z_a if keys_a is None else keys_a, s, p, temperature)
           + nt_xent(z_b, z_b if keys_b is None else keys_b, s, p, temperature))
    cluster = 2 * (prototype_ce(logits_a, labels_a.repeat(2)) + prototype_ce(logits_b, labels_b.repeat(2)))
    metric = siamese_metric_loss(metric_head, h_a, h_b, same)
    return {"nce": nce, "cluster": cluster, "metric": metric}
