"""Contrastive learning in feature space, and its gradient step computed as message passing.

Features ``F`` (n x d) are free rows on the unit sphere, one per augmented view. With
``A_hat = D^{-1/2} A D^{-1/2}`` the normalised augmentation graph, temperature ``t`` and the
weights ``a`` (alignment) and ``u`` (uniformity) of a :class:`Variant`, the feature-space loss
(a mean over views) is

    L(F) = -(a/n) [(1 - b) tr(F^T M F) + 2 b tr(F^T M S)] + u (t/n) sum_i log sum_j exp(f_i.f_j / t)

where ``M = A_hat * W`` (elementwise) is the augmentation graph reweighted by the detached
attention weights ``W`` (all ones without attention), ``S`` is the detached snapshot of ``F``
taken at the start of the current stage (multi-stage aggregation) and ``b`` the mixing
coefficient (``b = 0``: plain alignment ``-(a/n) tr(F^T A_hat F)``). Its gradient is

    -n dL/dF = 2a M ((1 - b) F + b S)  -  u (P + P^T) F,      P = rowsoftmax(F F^T / t)

i.e. two messages: every view receives its augmentation-graph neighbours' features (the
alignment message; with multi-stage aggregation the neighbours send a mix of their current
and previous-stage features) and gives back an average of all features weighted by the
affinity graph ``P`` (the uniformity message; ``P F`` is what view i attends to, ``P^T F``
what attends to view i). One step is ``F <- rownormalize(F + lr * messages)``: gradient descent
with per-view step ``lr`` (``lr * n`` on the mean loss), then the projection back to the sphere.
``t`` cancels in the uniformity message: it only sharpens ``P``.

Attention (as SimCLR-Attn's released loss: each positive pair's term weighted by the detached
exponential of its similarity, normalised over the positive pairs) reweights the edges:
``W_ij = (1 - alpha) + alpha * exp(f_i.f_j / t_att) / mean_A(exp(f.f / t_att))`` where the mean
is over the edges weighted by ``A_hat``, so the reweighted graph keeps the total edge weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Variant:
    """One simulated training rule."""

    name: str
    align: float = 1.0                    # weight of the alignment loss
    uniform: float = 1.0                  # weight of the uniformity loss
    attention: float = 0.0                # alpha: 0 uniform edge weights, 1 attention weights
    attention_temperature: float = 1.0    # t_att (the released SimCLR-Attn uses 1: exp(cos + 1))
    bank_mix: float = 0.0                 # b: weight of the previous stage's features in the target
    stage_steps: int = 20                 # steps per stage (an "epoch" of SimSiam-Multi's bank)

    def __post_init__(self):
        if self.align < 0 or self.uniform < 0 or self.align + self.uniform == 0:
            raise ValueError(f"variant {self.name}: align={self.align}, uniform={self.uniform}: "
                             "non-negative, not both 0")
        if not 0.0 <= self.attention <= 1.0:
            raise ValueError(f"variant {self.name}: attention={self.attention} must be in [0, 1]")
        if not 0.0 <= self.bank_mix <= 1.0:
            raise ValueError(f"variant {self.name}: bank_mix={self.bank_mix} must be in [0, 1]")
        if self.attention_temperature <= 0 or self.stage_steps < 1:
            raise ValueError(f"variant {self.name}: attention_temperature={self.attention_temperature} (> 0), "
                             f"stage_steps={self.stage_steps} (>= 1)")


def normalize_rows(f: Tensor) -> Tensor:
    return f / f.norm(dim=1, keepdim=True)


def affinity(f: Tensor, temperature: float) -> Tensor:
    """P = rowsoftmax(F F^T / t): the affinity graph of the features (self included)."""
    return torch.softmax(f @ f.T / temperature, dim=1)


def attention_weights(f: Tensor, a_hat: Tensor, variant: Variant) -> Tensor:
    """W (n x n, symmetric, detached): the edge weights of attention-reweighted alignment."""
    if variant.attention == 0:
        return torch.ones_like(a_hat)
    e = torch.exp(f.detach() @ f.detach().T / variant.attention_temperature)
    e = e / ((a_hat * e).sum() / a_hat.sum())
    return (1 - variant.attention) + variant.attention * e


def messages(f: Tensor, a_hat: Tensor, snapshot: Tensor, variant: Variant, temperature: float) -> Tensor:
    """-n dL/dF computed as message passing (see the module docstring)."""
    out = torch.zeros_like(f)
    if variant.align:
        m = a_hat * attention_weights(f, a_hat, variant)
        target = (1 - variant.bank_mix) * f + variant.bank_mix * snapshot
        out = out + 2 * variant.align * (m @ target)
    if variant.uniform:
        p = affinity(f, temperature)
        out = out - variant.uniform * (p @ f + p.T @ f)
    return out


def feature_loss(f: Tensor, a_hat: Tensor, snapshot: Tensor, variant: Variant, temperature: float) -> Tensor:
    """L(F), written as a loss (no message passing) so autograd can check :func:`messages`."""
    n = f.shape[0]
    loss = f.new_zeros(())
    if variant.align:
        m = a_hat * attention_weights(f, a_hat, variant)
        b = variant.bank_mix
        loss = loss - variant.align / n * ((1 - b) * torch.trace(f.T @ m @ f)
                                           + 2 * b * torch.trace(f.T @ m @ snapshot.detach()))
    if variant.uniform:
        loss = loss + variant.uniform * temperature / n * torch.logsumexp(f @ f.T / temperature, dim=1).sum()
    return loss

