"""Siamese Prototypical Contrastive Learning (Mo et al., BMVC 2021): the prototype
cross-entropy against k-means pseudo-labels and the siamese metric loss on |h_a - h_b|."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def metric_pairs(pseudo_labels: torch.Tensor, shift: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative partners for the siamese loss: sample i of view 1 with sample (i + shift) % n
    of view 2 (a random other sample, as the batch is shuffled), kept only where the two
    pseudo-labels differ. Returns (partner index, valid mask). Ground-truth labels are never
    used: pairs come from pseudo-labels only."""
    n = pseudo_labels.shape[0]
    partner = (torch.arange(n, device=pseudo_labels.device) + shift) % n
    return partner, pseudo_labels != pseudo_labels[partner]


def siamese_metric_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, neg_valid: torch.Tensor) -> torch.Tensor:
    """BCE with logits over positive pairs (target 1: two views of one image) and the valid
    negative pairs (target 0: different pseudo-labels), averaged over all of those pairs."""
    pos = F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits), reduction="sum")
    neg = F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits), reduction="none")
    neg = (neg * neg_valid).sum()
    return (pos + neg) / (pos_logits.numel() + neg_valid.sum())


def prototype_ce(logits: torch.Tensor, pseudo_labels: torch.Tensor) -> torch.Tensor:
    """CE(classifier(h), pseudo_label[index]) over the prototypes (``num_prototypes`` classes)."""
    return F.cross_entropy(logits, pseudo_labels)
