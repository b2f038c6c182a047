"""Per-pixel colour ops with per-sample parameters: grayscale, brightness / contrast /
saturation, hue rotation, solarize, normalize (torchvision's formulas, on float batches).

Brightness, contrast and saturation are all ``clamp(a * x + c * gray(x) + m * mean(gray(x)))``
with per-sample ``(a, c, m)``, so one "cheap step" (:func:`cheap_step_`) runs any of them per
sample. The hue is torchvision's HSV rotation rewritten with a dozen elementwise ops
(:func:`rotate_hue`), equal to ``adjust_hue`` to float rounding (~1e-6). Per-sample "apply"
decisions are exact 0/1 ``lerp`` blends (``torch.where`` and bool comparisons are several
times slower on CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mpcl.data.augment.constants import GRAY_WEIGHTS, HUE_CENTER
from mpcl.data.augment.tensors import (bcast, check_batch, cmp01, coin, const, owned_float,
                                       per_sample, to_float)


def luma(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), torchvision's operation order."""
    r, g, b = x.unbind(1)
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def rgb_to_grayscale(x: Tensor, num_output_channels: int = 1) -> Tensor:
    """torchvision ``rgb_to_grayscale`` on a float batch (uint8 is converted to [0, 1] first)."""
    check_batch(x)
    g = luma(to_float(x))
    return g.expand(-1, num_output_channels, -1, -1).contiguous() if num_output_channels != 1 else g


def cheap_step_(v: Tensor, a: Tensor, c: Tensor | None, m: Tensor | None) -> None:
    """In place on ``v``: ``v = clamp(a*v + c*gray(v) + m*mean(gray(v)), 0, 1)``, per-sample
    (n,1,1,1) a, c, m. ``c``/``m`` None means zero for every sample (skips the grayscale).

    brightness f: (a, c, m) = (f, 0, 0); contrast f: (f, 0, 1 - f); saturation f: (f, 1 - f, 0).
    """
    if c is None and m is None:
        v.mul_(a).clamp_(0.0, 1.0)
        return
    g = luma(v)
    if c is None:  # (n,1,1,1) offset: mul_ + add_ (addcmul with it broadcast is slow on CPU)
        v.mul_(a).add_(g.mean(dim=(2, 3), keepdim=True).mul_(m))
    else:
        off = g.mul_(c) if m is None else torch.addcmul(g.mean(dim=(2, 3), keepdim=True).mul_(m), g, c)
        torch.addcmul(off, v, a, out=v)
    v.clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    """Per-sample ``F.adjust_brightness``: ``clamp(f * x)``. ``factor``: scalar or (B,)."""
    check_batch(x)
    y = owned_float(x)
    f = bcast(per_sample(factor, y), y.dtype)
    cheap_step_(y, f, None, None)
    return y


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    """Per-sample ``F.adjust_contrast``: blend with the mean of the sample's grayscale image."""
    check_batch(x)
    y = owned_float(x)
    f = bcast(per_sample(factor, y), y.dtype)
    cheap_step_(y, f, None, 1.0 - f)
    return y


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    """Per-sample ``F.adjust_saturation``: blend with the grayscale image."""
    check_batch(x)
    y = owned_float(x)
    f = bcast(per_sample(factor, y), y.dtype)
    cheap_step_(y, f, 1.0 - f, None)
    return y


def rotate_hue(x: Tensor, hue6: Tensor) -> Tensor:
    """HSV hue rotation of a float batch in [0, 1]; ``hue6`` = 6 * hue_factor as (n,1,1,1).

    Exact rewrite of torchvision's rgb->hsv, h += f, hsv->rgb. With V = max, V*S = max - min
    and H6 = 6*H in [0, 6), channel c of the result is ``V - V*S*T_c`` where
    ``T_c = clamp(2 - circdist(H6, a_c), 0, 1) = clamp(| |H6 - a_c| - 3 | - 1, 0, 1)`` and a_c
    (3, 5, 1 for R, G, B) is the hue at which channel c is the minimum. Returns a new tensor.
    """
    mx = x.amax(dim=1, keepdim=True)  # (n,1,H,W)
    cr = mx - x.amin(dim=1, keepdim=True)
    # torchvision divides by 1 where max == min; there every numerator below is 0 anyway
    inv = cr.clamp_min(torch.finfo(x.dtype).tiny).reciprocal_()
    r, g, b = x.unbind(1)
    mx1, cr1 = mx.squeeze(1), cr.squeeze(1)
    # H6 * (max - min) per sector, torchvision's branch order: max == r wins, then max == g,
    # else b: r: g - b; g: 2*cr + b - r; b: 4*cr + r - g (lerp by 0/1 weights is exact)
    h = torch.lerp((r - g).add_(cr1, alpha=4.0), (b - r).add_(cr1, alpha=2.0), cmp01(torch.eq, mx1, g))
    h = h.lerp_(g - b, cmp01(torch.eq, mx1, r)).unsqueeze(1).mul_(inv)
    h.add_(hue6)  # H6 + 6 f in [-4, 8): wrap to [0, 6)
    h.sub_((h * (1.0 / 6.0)).floor_(), alpha=6.0)
    center = const(HUE_CENTER, (1, 3, 1, 1), x.device, x.dtype)
    # out = mx - cr * clamp(|w| - 1, 0, 1) = (mx + cr) - cr * clamp(|w|, 1, 2), w = |h - a| - 3
    t = (h - center).abs_().sub_(3.0).abs_().clamp_(1.0, 2.0)  # (n,3,H,W)
    return torch.addcmul(mx.add_(cr), cr, t, value=-1.0, out=t)


def adjust_hue(x: Tensor, factor: Tensor | float) -> Tensor:
    """Per-sample ``F.adjust_hue`` (factor in [-0.5, 0.5]) on float images; exact to ~1e-6."""
    check_batch(x)
    x = to_float(x)
    f = bcast(per_sample(factor, x), x.dtype)
    return rotate_hue(x, f * 6.0)


def grayscale_(y: Tensor, w: Tensor) -> Tensor:
    """In place: samples with w == 1 ((n,1,1,1) 0/1 weights) become grayscale (exact lerp)."""
    return y.lerp_(luma(y), w)


def random_grayscale(x: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """``RandomGrayscale(p)`` per sample (3-channel grayscale output)."""
    check_batch(x)
    y = owned_float(x)
    if p <= 0:
        return y
    return grayscale_(y, bcast(coin(y, p, generator), y.dtype))


def solarize_(y: Tensor, w: Tensor, threshold: float) -> Tensor:
    """In place: samples with w == 1 are solarized (x >= t -> 1 - x), exactly."""
    inv = 1.0 - y
    if threshold == 0.5:  # x >= 0.5 <=> 1 - x <= x, so solarize = min(x, 1 - x)
        sol = torch.minimum(y, inv, out=inv)
    else:
        sol = inv.lerp_(y, cmp01(torch.lt, y, threshold))
    return y.lerp_(sol, w)


def solarize(x: Tensor, p: float = 0.2, threshold: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """``RandomSolarize(threshold, p)`` per sample on [0, 1] images: x >= t -> 1 - x."""
    check_batch(x)
    y = owned_float(x)
    if p <= 0:
        return y
    return solarize_(y, bcast(coin(y, p, generator), y.dtype), threshold)


def norm_consts(mean, std, dtype, device) -> tuple[Tensor, Tensor]:
    if len(mean) != len(std) or min(std) <= 0:
        raise ValueError(f"normalize: mean={mean} and std={std} must have equal lengths and std > 0")
    scale = [1.0 / s for s in std]
    shift = [-m / s for m, s in zip(mean, std)]
    n = len(std)
    return const(scale, (1, n, 1, 1), device, dtype), const(shift, (1, n, 1, 1), device, dtype)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel (uint8 input is converted to [0, 1] first)."""
    x = to_float(x)
    scale, shift = norm_consts(mean, std, x.dtype, x.device)
    return torch.addcmul(shift, x, scale)
