"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of two views' embeddings pushed
towards the identity."""

from __future__ import annotations

import torch


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Batch normalisation without affine: per-dimension zero mean, unit (biased) variance."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """C_ij = mean_b zn1_bi * zn2_bj, zn the standardised embeddings of the (global) batch."""
    return standardize(z1, eps).T @ standardize(z2, eps) / z1.shape[0]


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 over the whole batch given.

    Under several workers pass the gathered embeddings (``gather_with_grad``) so that C is the
    cross-correlation of the global batch, as in the reference (there all-reduced).
    """
    c = cross_correlation(z1.float(), z2.float(), eps)
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off
