"""SimSiam's negative cosine and the multi-stage aggregation target (SimSiam-Multi)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-cos(p, sg(target)), averaged over the batch."""
    return -F.cosine_similarity(p, target.detach(), dim=-1).mean()


def symmetric_negative_cosine(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """0.5 * (D(p1, t1) + D(p2, t2)); for SimSiam t1 = z2 and t2 = z1."""
    return 0.5 * (negative_cosine(p1, t1) + negative_cosine(p2, t2))


def bank_target(z: torch.Tensor, bank_values: torch.Tensor, bank_mix: float,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """(1 - b) * z + b * bank, detached; rows whose bank entry is not ``valid`` keep z.

    With b = 0 the target is exactly z (plain SimSiam).
    """
    z = z.detach()
    mixed = (1.0 - bank_mix) * z + bank_mix * bank_values.to(z.dtype)
    if valid is not None:
        mixed = torch.where(valid[:, None], mixed, z)
    return mixed
