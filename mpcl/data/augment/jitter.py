"""Colour jitter with a random op order drawn per sample, applied to a whole batch.

torchvision's ``ColorJitter`` draws one op order per call (one image in a DataLoader
pipeline); here every sample draws its own. Only the hue rotation is expensive, so it runs
exactly once over the batch: the batch is visited in a random permutation whose rank decides
the hue position (first quarter of ranks: hue first, ...; exact quotas), hence the samples that
need ``k`` cheap steps before the hue are a contiguous suffix of the visiting order and those
that need them after it a prefix: slices, no masks. The result is scattered back to the input
order with one gather.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mpcl.data.augment.colour import cheap_step_, rotate_hue
from mpcl.data.augment.constants import CONTRAST, HUE, SATURATION
from mpcl.data.augment.tensors import (bcast, check_batch, coin, float_block, float_dtype,
                                       owned_float, rand, randperm, run_blocks)


@dataclass
class JitterParams:
    """Per-sample colour-jitter parameters for a batch of B samples.

    apply:   (B,) bool, the RandomApply(p) coin.
    factors: (B, 4) float, [brightness, contrast, saturation, hue] (identity values for ops that
             are disabled; jitter of a sample whose ``apply`` is False is skipped altogether).
    order:   (B, 4) long, the op ids (0 b, 1 c, 2 s, 3 h) in the order each sample applies them;
             disabled ops are still listed (they are identities).
    perm:    (B,) long or None (identity), the order the batch is visited in; the sample of
             rank r (position in ``perm``) has its hue at position ``r * (n_cheap + 1) // B``
             among its enabled ops.
    cheap:   the enabled cheap op ids (subset of (0, 1, 2)), in id order.
    hue:     whether the hue op is enabled.
    """

    apply: Tensor
    factors: Tensor
    order: Tensor
    perm: Tensor | None
    cheap: tuple[int, ...]
    hue: bool


def _factor_range(name: str, v: float | Sequence[float], center: float,
                  bound: tuple[float, float]) -> tuple[float, float] | None:
    if isinstance(v, (int, float)):
        if v < 0:
            raise ValueError(f"color_jitter: {name}={v} must be non-negative")
        lo, hi = (center - v, center + v) if center == 0.0 else (max(0.0, center - v), center + v)
    else:
        lo, hi = float(v[0]), float(v[1])
    if not (bound[0] <= lo <= hi <= bound[1]):
        raise ValueError(f"color_jitter: {name} range ({lo}, {hi}) must lie in {bound}")
    return None if lo == hi == center else (lo, hi)


def sample_jitter_params(
    x: Tensor,
    brightness: float | Sequence[float] = 0.4,
    contrast: float | Sequence[float] = 0.4,
    saturation: float | Sequence[float] = 0.4,
    hue: float | Sequence[float] = 0.1,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> JitterParams:
    """Draw per-sample ColorJitter parameters for batch ``x`` (only its size/device are used)."""
    B = x.shape[0]
    inf = float("inf")
    ranges = [
        _factor_range("brightness", brightness, 1.0, (0.0, inf)),
        _factor_range("contrast", contrast, 1.0, (0.0, inf)),
        _factor_range("saturation", saturation, 1.0, (0.0, inf)),
        _factor_range("hue", hue, 0.0, (-0.5, 0.5)),
    ]
    cheap = tuple(i for i in range(3) if ranges[i] is not None)
    hue_on = ranges[3] is not None
    apply = coin(x, p, generator)
    u = rand((B, 4), x, generator)
    cols = []
    for i, rg in enumerate(ranges):
        ident = 0.0 if i == HUE else 1.0
        cols.append(torch.full((B,), ident, device=x.device) if rg is None else u[:, i] * (rg[1] - rg[0]) + rg[0])
    factors = torch.stack(cols, 1)
    # per-sample random order of the cheap ops: argsort of uniforms is a uniform permutation
    cheap_order = rand((B, 3), x, generator).argsort(dim=1)  # (B,3) values 0..2, all three ops
    perm = randperm(B, x, generator)
    if not hue_on or not cheap:  # the hue position only matters relative to cheap ops
        perm = None
    # full per-sample order (for the record and for reference implementations): hue is inserted
    # at position rank * (n_enabled_cheap + 1) // B counted among the *enabled* ops.
    n_cheap = len(cheap)
    if cheap and len(cheap) < 3:
        # keep only enabled ops first (their relative order random), disabled ones at the end
        en = torch.zeros(3, dtype=torch.bool, device=x.device)
        for i in cheap:
            en[i] = True
        key = (~en[cheap_order]).to(torch.long)
        cheap_order = cheap_order.gather(1, torch.sort(key, dim=1, stable=True).indices)
    if perm is not None:
        rank = torch.empty_like(perm)
        rank[perm] = torch.arange(B, device=x.device)
        hue_pos = rank * (n_cheap + 1) // B
    else:
        hue_pos = torch.full((B,), 0 if hue_on else 3, dtype=torch.long, device=x.device)
    pos = torch.arange(4, device=x.device).view(1, 4)
    hp = hue_pos.view(-1, 1)
    idx = torch.where(pos < hp, pos, (pos - 1).clamp_min(0)).clamp_max(2)
    order = torch.where(pos == hp, HUE, cheap_order.gather(1, idx))
    return JitterParams(apply=apply, factors=factors, order=order, perm=perm, cheap=cheap, hue=hue_on)


def _cheap_coefs(params: JitterParams, dtype: torch.dtype) -> list[tuple[Tensor, Tensor | None, Tensor | None]]:
    """Per cheap step q (0..n_cheap-1): (a, c, m) as (B,1,1,1) tensors (None = all zero)."""
    f = params.factors
    B = f.shape[0]
    order = params.order
    # cheap op of step q = q-th non-hue entry of order
    non_hue = order != HUE
    # positions of non-hue entries: stable sort keeps their order
    idx = torch.sort((~non_hue).to(torch.long), dim=1, stable=True).indices[:, :3]
    cheap_ops = order.gather(1, idx)  # (B,3)
    out = []
    has_c = SATURATION in params.cheap
    has_m = CONTRAST in params.cheap
    for q in range(len(params.cheap)):
        op = cheap_ops[:, q]
        fq = f.gather(1, op.view(B, 1)).squeeze(1)
        # samples whose coin said no get identity coefficients: exact, so they go through the
        # cheap steps bit-identical (the hue is undone for them by an exact 0/1 lerp)
        fq = torch.where(params.apply, fq, 1.0)
        a = bcast(fq, dtype)
        c = bcast(torch.where(op == SATURATION, 1.0 - fq, 0.0), dtype) if has_c else None
        m = bcast(torch.where(op == CONTRAST, 1.0 - fq, 0.0), dtype) if has_m else None
        out.append((a, c, m))
    return out


def _jitter_block_(
    y: Tensor,
    coefs: list[tuple[Tensor, Tensor | None, Tensor | None]],
    hue6: Tensor | None,
    apply_w: Tensor | None,
    bounds: list[int],
) -> Tensor:
    """Jitter one block (float, owned: modified in place) whose samples are sorted by hue position.

    ``coefs``/``hue6``/``apply_w`` are already restricted to the block (rows in block order);
    non-applied samples have identity cheap coefficients (exact), and ``apply_w`` (n,1,1,1) 0/1
    restores them exactly after the hue (None: every sample is applied).
    ``bounds[k]`` = first local index whose hue position is >= k (k = 0..n_cheap+1), so samples
    with hue position k are ``bounds[k]:bounds[k+1]``. Returns the result (``y`` or a new tensor).
    """
    n = y.shape[0]
    nq = len(coefs)

    def step(q: int, s: int, e: int) -> None:
        if e > s:
            a, c, m = coefs[q]
            if s == 0 and e == n:
                cheap_step_(y, a, c, m)
            else:
                cheap_step_(y[s:e], a[s:e], None if c is None else c[s:e], None if m is None else m[s:e])

    if hue6 is None:
        for q in range(nq):
            step(q, 0, n)
        return y
    # cheap step q before the hue for samples with hue position > q: a suffix
    for q in range(nq):
        step(q, bounds[q + 1], n)
    h = rotate_hue(y, hue6)
    if apply_w is None:
        y = h
    else:
        y.lerp_(h, apply_w)
    # cheap step q after the hue for samples with hue position <= q: a prefix
    for q in range(nq):
        step(q, 0, bounds[q + 1])
    return y


class JitterPlan:
    """Batch-level pieces of a JitterParams, in visiting order (``params.perm``), so that a
    block of ranks ``s:e`` only slices them."""

    def __init__(self, params: JitterParams, dtype: torch.dtype, p_is_one: bool):
        perm = params.perm
        self.B = params.factors.shape[0]
        self.nq = len(params.cheap)

        def vis(t: Tensor) -> Tensor:
            return t if perm is None else t.index_select(0, perm)

        self.coefs = [(vis(a), None if c is None else vis(c), None if m is None else vis(m))
                      for a, c, m in _cheap_coefs(params, dtype)]
        self.hue6 = (vis(bcast(torch.where(params.apply, params.factors[:, HUE], 0.0) * 6.0, dtype))
                     if params.hue else None)
        self.apply_w = None if p_is_one or not params.hue else vis(bcast(params.apply, dtype))

    def block_(self, y: Tensor, s: int, e: int) -> Tensor:
        """Jitter block ``y`` (owned float) = the samples of ranks s..e of the visiting order."""
        coefs = [(a[s:e], None if c is None else c[s:e], None if m is None else m[s:e]) for a, c, m in self.coefs]
        hue6 = None if self.hue6 is None else self.hue6[s:e]
        apply_w = None if self.apply_w is None else self.apply_w[s:e]
        K = self.nq + 1
        bounds = [min(max(-(-k * self.B // K) - s, 0), e - s) for k in range(K + 1)]  # ceil(k*B/K)
        return _jitter_block_(y, coefs, hue6, apply_w, bounds)


def apply_color_jitter(x: Tensor, params: JitterParams, block_size: int | None = None) -> Tensor:
    """Apply ``params`` (from :func:`sample_jitter_params`) to batch ``x``; returns float."""
    check_batch(x)
    return _jitter_batch(x, params, block_size, p_is_one=False)


def color_jitter(
    x: Tensor,
    brightness: float | Sequence[float] = 0.4,
    contrast: float | Sequence[float] = 0.4,
    saturation: float | Sequence[float] = 0.4,
    hue: float | Sequence[float] = 0.1,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``RandomApply([ColorJitter(b, c, s, h)], p)`` per sample, random op order per sample."""
    check_batch(x)
    if p <= 0:
        return owned_float(x)
    params = sample_jitter_params(x, brightness, contrast, saturation, hue, p, generator)
    return _jitter_batch(x, params, None, p_is_one=p >= 1)


def _jitter_batch(x: Tensor, params: JitterParams, block_size: int | None, p_is_one: bool) -> Tensor:
    """The whole batch through :class:`JitterPlan`, block by block in the visiting order."""
    dtype = float_dtype(x)
    plan = JitterPlan(params, dtype, p_is_one=p_is_one)
    return run_blocks(x, params.perm, block_size, lambda xb, s, e, dst: plan.block_(float_block(xb, dst), s, e),
                      x.shape[1:], dtype)
