"""What the simulator tracks at every step; every function takes unit-norm features F (n x d)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def alignment(f: Tensor, adjacency: Tensor) -> float:
    """Wang & Isola's alignment: E ||f_i - f_j||^2 over positive pairs (i != j, weighted by A).

    With unit rows, sum_{i != j} A_ij ||f_i - f_j||^2 = 2 (sum A - tr A) - 2 (tr(F^T A F) - tr A)."""
    self_weight = torch.diagonal(adjacency).sum()
    pairs = adjacency.sum() - self_weight
    similarity = ((adjacency @ f) * f).sum() - self_weight
    return float(2 - 2 * similarity / pairs)


def uniformity(f: Tensor, t: float = 2.0) -> float:
    """Wang & Isola's uniformity: log E_{i != j} exp(-t ||f_i - f_j||^2) (lower: more uniform)."""
    n = len(f)
    logits = (-t * (2 - 2 * f @ f.T).clamp_min(0)).fill_diagonal_(float("-inf"))
    return float(torch.logsumexp(logits.flatten(), 0) - math.log(n * (n - 1)))


def effective_rank(f: Tensor) -> float:
    """exp of the entropy of the normalised singular values of F (Roy & Vetterli): 1 when every
    row is the same point, d when the rows spread evenly over d directions."""
    s = torch.linalg.svdvals(f)
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def knn_accuracy(f: Tensor, labels: Tensor, origin: Tensor, k: int = 10) -> float:
    """Leave-one-out kNN accuracy (cosine, majority vote) of the latent classes, counting only
    neighbours drawn from other natural samples: views of the same sample would make it trivial."""
    sim = (f @ f.T).masked_fill(origin[:, None] == origin[None, :], float("-inf"))
    k = min(k, int((origin != origin[0]).sum()))
    idx = sim.topk(k, dim=1).indices
    votes = torch.zeros(len(f), int(labels.max()) + 1, dtype=f.dtype)
    votes.scatter_add_(1, labels[idx], torch.ones(idx.shape, dtype=f.dtype))
    return float((votes.argmax(1) == labels).double().mean())


def equilibrium_distance(f: Tensor, adjacency: Tensor, temperature: float) -> float:
    """How far the affinity graph is from the augmentation graph: the mean over views of the
    total-variation distance between row i of P = rowsoftmax(F F^T / t) and row i of D^{-1} A
    (both distributions over the n views, self included), (1/n) sum_i 1/2 sum_j |P_ij - A_ij/d_i|.
    0 when the features' affinities reproduce the augmentation graph (the equilibrium of the two
    messages), 1 when they put all their mass where the graph has none."""
    p = torch.softmax(f @ f.T / temperature, dim=1)
    target = adjacency / adjacency.sum(1, keepdim=True)
    return float(0.5 * (p - target).abs().sum(1).mean())


def hard_pair_alignment(f: Tensor, pairs: Tensor) -> float:
    """Mean ||f_i - f_j||^2 over the given (m, 2) index pairs (e.g. the initially hardest positives)."""
    return float((f[pairs[:, 0]] - f[pairs[:, 1]]).pow(2).sum(1).mean())
