"""SSL augmentations applied to whole batches on the training device.

Every transform takes a batch ``x`` of shape ``(B, 3, H, W)``, ``uint8`` (0..255) or float in
``[0, 1]``, on any device, and returns a float batch (``float32`` for ``uint8`` input, else the
input dtype) with values in ``[0, 1]`` (before the optional mean/std normalisation).

Semantics follow torchvision (``torchvision.transforms.v2.functional``) so a recipe means what
it means in the papers:

* random resized crop: torchvision's box sampling (area fraction, log-uniform aspect ratio,
  10 tries then the centre-crop fallback), then a resize that reproduces
  ``F.resized_crop(..., antialias=...)`` (bilinear or bicubic; ``antialias=True`` is PIL's
  resampling, which is what the papers' PIL pipelines did).
* colour jitter: factors uniform in ``[max(0, 1 - s), 1 + s]`` (hue in ``[-h, h]``), each op
  clamps to ``[0, 1]`` like torchvision; the four ops run in a random order **drawn per
  sample** (torchvision draws one order per call, i.e. per image in a DataLoader pipeline).
* grayscale (ITU-R 601-2 luma, torchvision's weights 0.2989/0.587/0.114), gaussian blur
  (torchvision's kernel, reflect padding), solarize (``x >= t -> 1 - x``), normalize.

Every random parameter, including each "apply with probability p" coin, is drawn
independently per sample. Randomness comes from ``generator`` (a ``torch.Generator``; best on
``x``'s device; a CPU generator also works for CUDA batches: parameters are then drawn on the
CPU and copied through pinned memory) or, when it is ``None``, from torch's default generator
of ``x``'s device. The same seed gives the same output, whatever the block size. On
accelerators nothing here reads a tensor value back to the host (no ``.item()``, no
data-dependent shapes, no blocking host->device copies), so the transforms never synchronise
the stream; only the CPU path uses data-dependent shapes (blur of the selected samples only).

How the colour jitter stays cheap with a per-sample order: brightness, contrast and saturation
are all ``clamp(a * x + c * gray(x) + m * mean(gray(x)))`` with per-sample ``(a, c, m)``, so one
"cheap step" runs any of them per sample. Only the hue rotation is expensive, so it runs
exactly once over the batch: the batch is visited in a random permutation whose rank decides the
hue position (first quarter of ranks: hue first, ...; exact quotas), hence the samples that need
``k`` cheap steps before the hue are a contiguous suffix of the visiting order and those that
need them after it a prefix: slices, no masks. The result is scattered back to the input order
with one gather. The hue itself is torchvision's HSV rotation rewritten with a dozen
elementwise ops (``out_c = max - (max - min) * clamp(2 - circdist(6 h, a_c), 0, 1)``), equal to
``adjust_hue`` to float rounding (~1e-6). Per-sample "apply" decisions are exact 0/1 ``lerp``
blends (``torch.where`` and bool comparisons are several times slower on CPU).

On CPU the fused pipeline (``SSLAugment``, ``color_jitter``) works through the batch in blocks
of about 1.5 MB (cache-sized, at least 8 samples); on accelerators the whole batch is one block.
On CPU ``SSLAugment`` runs its colour stage (jitter + grayscale) as one compiled per-sample
kernel instead (:mod:`mpcl.data.colour_cpu`, 2-3x faster; ``cpu_kernel=False`` for the eager
ops): same parameters, same result to float rounding.
See :func:`tune_cpu_malloc` for the allocator setting that matters on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpcl.data import colour_cpu

__all__ = [
    "GRAY_WEIGHTS",
    "JitterParams",
    "SSLAugment",
    "EvalTransform",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_color_jitter",
    "apply_gaussian_blur",
    "blur_kernel_size",
    "color_jitter",
    "gaussian_blur",
    "normalize",
    "random_flip",
    "random_grayscale",
    "random_resized_crop",
    "resized_crop",
    "rgb_to_grayscale",
    "sample_crop_boxes",
    "sample_jitter_params",
    "solarize",
    "to_float",
    "tune_cpu_malloc",
]

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)

# Op ids used by JitterParams.order (torchvision's ColorJitter fn_idx numbering).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

# CPU block size for the fused pipelines: ~bytes of one float32 block tensor (about L2), and
# the fewest samples per block (below that Python overhead per op dominates).
_CPU_BLOCK_BYTES = 1536 * 1024
_CPU_MIN_BLOCK = 8


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _check_batch(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a batch of RGB images (B, 3, H, W), got shape {tuple(x.shape)}")


def _float_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def to_float(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """uint8 (0..255) -> float in [0, 1]; float input is returned as is (cast to ``dtype``)."""
    if x.is_floating_point():
        return x if dtype is None or x.dtype == dtype else x.to(dtype)
    return x.to(dtype or torch.float32).mul_(1.0 / 255.0)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Move a small tensor to ``device`` without blocking the host on a CUDA stream."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _rand(shape: Sequence[int] | int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) float32 on x's device, drawn on the generator's device."""
    dev = generator.device if generator is not None else x.device
    return _to_device(torch.rand(shape, generator=generator, device=dev), x.device)


def _randperm(n: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    dev = generator.device if generator is not None else x.device
    return _to_device(torch.randperm(n, generator=generator, device=dev), x.device)


def _coin(x: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    """Per-sample Bernoulli(p) as a bool tensor (B,)."""
    return _rand(x.shape[0], x, generator) < p


_CONSTS: dict[tuple, Tensor] = {}


def _const(values: Sequence[float], shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small constant tensor on ``device``, built with fills (no host->device copy), cached."""
    key = (tuple(float(v) for v in values), tuple(shape), str(device), dtype)
    t = _CONSTS.get(key)
    if t is None:
        t = torch.empty(len(values), device=device, dtype=dtype)
        for i, v in enumerate(values):
            t[i] = float(v)
        t = t.view(*shape)
        if len(_CONSTS) < 256:
            _CONSTS[key] = t
    return t


def _per_sample(v: Tensor | float, x: Tensor) -> Tensor:
    """A per-sample parameter as a float32 tensor (B,) on x's device."""
    if not isinstance(v, Tensor):
        return torch.full((x.shape[0],), float(v), device=x.device)
    t = _to_device(v.to(torch.float32), x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"per-sample parameter must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def _bcast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """(B,) -> (B, 1, 1, 1) in dtype."""
    return t.to(dtype).view(-1, 1, 1, 1)


def _block_len(n: int, per_sample_elems: int, device: torch.device, block_size: int | None) -> int:
    if block_size is not None:
        return max(1, int(block_size))
    if device.type != "cpu":
        return max(1, n)
    return max(_CPU_MIN_BLOCK, _CPU_BLOCK_BYTES // (4 * max(1, per_sample_elems)))


def tune_cpu_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30, large_from_heap: bool = True) -> bool:
    """glibc only, opt-in, process-wide: keep freed memory in the process instead of handing it
    back to the OS after every large tensor is freed.

    Eager CPU tensor code allocates and frees many MB-sized buffers per batch; glibc returns
    them to the OS (mmap/trim) and every new buffer then page-faults on first touch, which in
    VMs can cost as much as the arithmetic (measured 2-5x on the blur and the crop here).
    Call once from a CPU training/benchmark entry point. Returns True if applied.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
        ok = bool(libc.mallopt(m_mmap_threshold, int(mmap_threshold)))
        ok = bool(libc.mallopt(m_trim_threshold, int(trim_threshold))) and ok
        if large_from_heap:  # above the 32 MB mmap ceiling too (batches of large images)
            ok = bool(libc.mallopt(m_mmap_max, 0)) and ok
        return ok
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------------------------
# colour: per-sample parameter kernels (the random wrappers and the fused pipeline call these)
# --------------------------------------------------------------------------------------------


def _gray(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), torchvision's operation order."""
    r, g, b = x.unbind(1)
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def rgb_to_grayscale(x: Tensor, num_output_channels: int = 1) -> Tensor:
    """torchvision ``rgb_to_grayscale`` on a float batch (uint8 is converted to [0, 1] first)."""
    _check_batch(x)
    g = _gray(to_float(x))
    return g.expand(-1, num_output_channels, -1, -1).contiguous() if num_output_channels != 1 else g


def _cheap_step_(v: Tensor, a: Tensor, c: Tensor | None, m: Tensor | None) -> None:
    """In place on ``v``: ``v = clamp(a*v + c*gray(v) + m*mean(gray(v)), 0, 1)``, per-sample
    (n,1,1,1) a, c, m. ``c``/``m`` None means zero for every sample (skips the grayscale).

    brightness f: (a, c, m) = (f, 0, 0); contrast f: (f, 0, 1 - f); saturation f: (f, 1 - f, 0).
    """
    if c is None and m is None:
        v.mul_(a).clamp_(0.0, 1.0)
        return
    g = _gray(v)
    if c is None:  # (n,1,1,1) offset: mul_ + add_ (addcmul with it broadcast is slow on CPU)
        v.mul_(a).add_(g.mean(dim=(2, 3), keepdim=True).mul_(m))
    else:
        off = g.mul_(c) if m is None else torch.addcmul(g.mean(dim=(2, 3), keepdim=True).mul_(m), g, c)
        torch.addcmul(off, v, a, out=v)
    v.clamp_(0.0, 1.0)


def _owned_float(x: Tensor) -> Tensor:
    """A float copy of x that the caller may modify in place."""
    return to_float(x).clone() if x.is_floating_point() else to_float(x)


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    """Per-sample ``F.adjust_brightness``: ``clamp(f * x)``. ``factor``: scalar or (B,)."""
    _check_batch(x)
    y = _owned_float(x)
    f = _bcast(_per_sample(factor, y), y.dtype)
    _cheap_step_(y, f, None, None)
    return y


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    """Per-sample ``F.adjust_contrast``: blend with the mean of the sample's grayscale image."""
    _check_batch(x)
    y = _owned_float(x)
    f = _bcast(_per_sample(factor, y), y.dtype)
    _cheap_step_(y, f, None, 1.0 - f)
    return y


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    """Per-sample ``F.adjust_saturation``: blend with the grayscale image."""
    _check_batch(x)
    y = _owned_float(x)
    f = _bcast(_per_sample(factor, y), y.dtype)
    _cheap_step_(y, f, 1.0 - f, None)
    return y


_HUE_CENTER = (3.0, 5.0, 1.0)  # H6 at which channel R, G, B is the minimum


def _cmp(fn, a: Tensor, b: Tensor | float) -> Tensor:
    """Comparison as a float 0/1 tensor (torch's bool-output comparisons are slow on CPU)."""
    shape = torch.broadcast_shapes(a.shape, b.shape) if isinstance(b, Tensor) else a.shape
    return fn(a, b, out=torch.empty(shape, dtype=a.dtype, device=a.device))


def _hue(x: Tensor, hue6: Tensor) -> Tensor:
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
    h = torch.lerp((r - g).add_(cr1, alpha=4.0), (b - r).add_(cr1, alpha=2.0), _cmp(torch.eq, mx1, g))
    h = h.lerp_(g - b, _cmp(torch.eq, mx1, r)).unsqueeze(1).mul_(inv)
    h.add_(hue6)  # H6 + 6 f in [-4, 8): wrap to [0, 6)
    h.sub_((h * (1.0 / 6.0)).floor_(), alpha=6.0)
    center = _const(_HUE_CENTER, (1, 3, 1, 1), x.device, x.dtype)
    # out = mx - cr * clamp(|w| - 1, 0, 1) = (mx + cr) - cr * clamp(|w|, 1, 2), w = |h - a| - 3
    t = (h - center).abs_().sub_(3.0).abs_().clamp_(1.0, 2.0)  # (n,3,H,W)
    return torch.addcmul(mx.add_(cr), cr, t, value=-1.0, out=t)


def adjust_hue(x: Tensor, factor: Tensor | float) -> Tensor:
    """Per-sample ``F.adjust_hue`` (factor in [-0.5, 0.5]) on float images; exact to ~1e-6."""
    _check_batch(x)
    x = to_float(x)
    f = _bcast(_per_sample(factor, x), x.dtype)
    return _hue(x, f * 6.0)


# --------------------------------------------------------------------------------------------
# colour jitter: parameters and the fused per-sample-order application
# --------------------------------------------------------------------------------------------


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


def _factor_range(name: str, v: float | Sequence[float], center: float, bound: tuple[float, float]) -> tuple[float, float] | None:
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
    apply = _coin(x, p, generator)
    u = _rand((B, 4), x, generator)
    cols = []
    for i, rg in enumerate(ranges):
        ident = 0.0 if i == HUE else 1.0
        cols.append(torch.full((B,), ident, device=x.device) if rg is None else u[:, i] * (rg[1] - rg[0]) + rg[0])
    factors = torch.stack(cols, 1)
    # per-sample random order of the cheap ops: argsort of uniforms is a uniform permutation
    cheap_order = _rand((B, 3), x, generator).argsort(dim=1)  # (B,3) values 0..2, all three ops
    perm = _randperm(B, x, generator)
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
        a = _bcast(fq, dtype)
        c = _bcast(torch.where(op == SATURATION, 1.0 - fq, 0.0), dtype) if has_c else None
        m = _bcast(torch.where(op == CONTRAST, 1.0 - fq, 0.0), dtype) if has_m else None
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
                _cheap_step_(y, a, c, m)
            else:
                _cheap_step_(y[s:e], a[s:e], None if c is None else c[s:e], None if m is None else m[s:e])

    if hue6 is None:
        for q in range(nq):
            step(q, 0, n)
        return y
    # cheap step q before the hue for samples with hue position > q: a suffix
    for q in range(nq):
        step(q, bounds[q + 1], n)
    h = _hue(y, hue6)
    if apply_w is None:
        y = h
    else:
        y.lerp_(h, apply_w)
    # cheap step q after the hue for samples with hue position <= q: a prefix
    for q in range(nq):
        step(q, 0, bounds[q + 1])
    return y


class _JitterPlan:
    """Batch-level pieces of a JitterParams, in visiting order (``params.perm``), so that a
    block of ranks ``s:e`` only slices them."""

    def __init__(self, params: JitterParams, dtype: torch.dtype, p_is_one: bool):
        perm = params.perm
        self.B = params.factors.shape[0]
        self.nq = len(params.cheap)

        def vis(t: Tensor) -> Tensor:
            return t if perm is None else t.index_select(0, perm)

        self.coefs = [(vis(a), None if c is None else vis(c), None if m is None else vis(m)) for a, c, m in _cheap_coefs(params, dtype)]
        self.hue6 = vis(_bcast(torch.where(params.apply, params.factors[:, HUE], 0.0) * 6.0, dtype)) if params.hue else None
        self.apply_w = None if p_is_one or not params.hue else vis(_bcast(params.apply, dtype))

    def block_(self, y: Tensor, s: int, e: int) -> Tensor:
        """Jitter block ``y`` (owned float) = the samples of ranks s..e of the visiting order."""
        coefs = [(a[s:e], None if c is None else c[s:e], None if m is None else m[s:e]) for a, c, m in self.coefs]
        hue6 = None if self.hue6 is None else self.hue6[s:e]
        apply_w = None if self.apply_w is None else self.apply_w[s:e]
        K = self.nq + 1
        bounds = [min(max(-(-k * self.B // K) - s, 0), e - s) for k in range(K + 1)]  # ceil(k*B/K)
        return _jitter_block_(y, coefs, hue6, apply_w, bounds)


def _float_block(xb: Tensor, dst: Tensor) -> Tensor:
    """Block -> float in [0, 1], written into ``dst`` (the block's slice of the output)."""
    dst.copy_(xb)
    return dst if xb.is_floating_point() else dst.mul_(1.0 / 255.0)


def apply_color_jitter(x: Tensor, params: JitterParams, block_size: int | None = None) -> Tensor:
    """Apply ``params`` (from :func:`sample_jitter_params`) to batch ``x``; returns float."""
    _check_batch(x)
    dtype = _float_dtype(x)
    plan = _JitterPlan(params, dtype, p_is_one=False)
    return _run_blocks(x, params.perm, block_size, lambda xb, s, e, dst: plan.block_(_float_block(xb, dst), s, e), x.shape[1:], dtype)


def _run_blocks(x: Tensor, perm: Tensor | None, block_size: int | None, fn, out_chw, dtype: torch.dtype) -> Tensor:
    """Run ``y = fn(x_block, s, e, dst)`` over blocks of ranks ``s:e`` of the batch visited in
    ``perm`` order (None: identity); ``dst`` is the block's slice of the output (in visiting
    order), which fn may use as its working buffer. Returns the output in input order."""
    B = x.shape[0]
    out = torch.empty((B,) + tuple(out_chw), dtype=dtype, device=x.device)
    per = max(int(math.prod(out_chw)), int(math.prod(x.shape[1:])))
    L = _block_len(B, per, x.device, block_size)
    for s in range(0, B, L):
        e = min(B, s + L)
        dst = out[s:e]
        xb = x[s:e] if perm is None else x.index_select(0, perm[s:e])
        yb = fn(xb, s, e, dst)
        if yb.data_ptr() != dst.data_ptr():
            dst.copy_(yb)
    if perm is None:
        return out
    # scatter back with a gather (index_select is ~5x faster than index_copy_ on CPU)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(B, device=perm.device)
    return out.index_select(0, inv)


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
    _check_batch(x)
    if p <= 0:
        return _owned_float(x)
    params = sample_jitter_params(x, brightness, contrast, saturation, hue, p, generator)
    dtype = _float_dtype(x)
    plan = _JitterPlan(params, dtype, p_is_one=p >= 1)
    return _run_blocks(x, params.perm, None, lambda xb, s, e, dst: plan.block_(_float_block(xb, dst), s, e), x.shape[1:], dtype)


# --------------------------------------------------------------------------------------------
# grayscale, blur, solarize, normalize
# --------------------------------------------------------------------------------------------


def _grayscale_(y: Tensor, w: Tensor) -> Tensor:
    """In place: samples with w == 1 ((n,1,1,1) 0/1 weights) become grayscale (exact lerp)."""
    return y.lerp_(_gray(y), w)


def random_grayscale(x: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """``RandomGrayscale(p)`` per sample (3-channel grayscale output)."""
    _check_batch(x)
    y = _owned_float(x)
    if p <= 0:
        return y
    return _grayscale_(y, _bcast(_coin(y, p, generator), y.dtype))


def blur_kernel_size(size: int) -> int:
    """~10% of the image side, made odd (SimCLR: 23 at 224, 9 at 96, 3 at 32)."""
    k = max(1, int(0.1 * size))
    return k if k % 2 == 1 else k + 1


def _gauss_kernels(sigma: Tensor, kernel_size: int, dtype: torch.dtype) -> Tensor:
    """(n,) sigma -> (n, k) torchvision gaussian kernels; sigma <= 0 gives the identity (delta)."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, steps=kernel_size, dtype=dtype, device=sigma.device)
    s = sigma.to(dtype).view(-1, 1)
    ker = torch.softmax(t.view(1, -1).div(s.clamp_min(1e-12)).pow(2).neg(), dim=1)
    delta = torch.zeros(kernel_size, dtype=dtype, device=sigma.device)
    delta[kernel_size // 2] = 1.0
    return torch.where(s > 0, ker, delta)


def _blur_all(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    n, C, H, W = x.shape
    pad = kernel_size // 2
    ker = _gauss_kernels(sigma, kernel_size, x.dtype).repeat_interleave(C, dim=0)  # (n*C, k)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, n * C, H + 2 * pad, W + 2 * pad)
    y = F.conv2d(xp, ker.view(n * C, 1, kernel_size, 1), groups=n * C)
    y = F.conv2d(y, ker.view(n * C, 1, 1, kernel_size), groups=n * C)
    return y.view(n, C, H, W)


def _blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable per-sample gaussian blur (reflect padding) via grouped convolution; samples
    with sigma <= 0 are left as they are. May return ``x`` itself (modified in place).

    On accelerators every sample is convolved (identity kernels for the others: no
    data-dependent shapes, no sync). On CPU, where reading the mask costs nothing, only the
    blurred samples are convolved.
    """
    if kernel_size <= 1:
        return x
    if x.device.type != "cpu":
        return _blur_all(x, sigma, kernel_size)
    sel = (sigma > 0).nonzero().squeeze(1)
    k = sel.numel()
    if k == x.shape[0]:
        return _blur_all(x, sigma, kernel_size)
    if k > 0:
        x[sel] = _blur_all(x.index_select(0, sel), sigma.index_select(0, sel), kernel_size)
    return x


def apply_gaussian_blur(x: Tensor, sigma: Tensor | float, kernel_size: int) -> Tensor:
    """Per-sample ``F.gaussian_blur(x_i, kernel_size, sigma_i)``; sigma <= 0 leaves a sample as is."""
    _check_batch(x)
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"gaussian_blur: kernel_size={kernel_size} must be odd and positive")
    y = _owned_float(x)
    return _blur(y, _per_sample(sigma, y), kernel_size)


def _blur_sigma(x: Tensor, p: float, sigma: tuple[float, float], generator) -> Tensor:
    apply = _coin(x, p, generator)
    s = _rand(x.shape[0], x, generator) * (sigma[1] - sigma[0]) + sigma[0]
    return torch.where(apply, s, 0.0)


def gaussian_blur(
    x: Tensor,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``RandomApply([GaussianBlur(k, sigma)], p)`` per sample; sigma ~ U(sigma) per sample."""
    _check_batch(x)
    y = _owned_float(x)
    k = kernel_size or blur_kernel_size(min(y.shape[-2:]))
    if p <= 0 or k <= 1:
        return y
    return _blur(y, _blur_sigma(y, p, sigma, generator), k)


def _solarize_(y: Tensor, w: Tensor, threshold: float) -> Tensor:
    """In place: samples with w == 1 are solarized (x >= t -> 1 - x), exactly."""
    inv = 1.0 - y
    if threshold == 0.5:  # x >= 0.5 <=> 1 - x <= x, so solarize = min(x, 1 - x)
        sol = torch.minimum(y, inv, out=inv)
    else:
        sol = inv.lerp_(y, _cmp(torch.lt, y, threshold))
    return y.lerp_(sol, w)


def solarize(x: Tensor, p: float = 0.2, threshold: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """``RandomSolarize(threshold, p)`` per sample on [0, 1] images: x >= t -> 1 - x."""
    _check_batch(x)
    y = _owned_float(x)
    if p <= 0:
        return y
    return _solarize_(y, _bcast(_coin(y, p, generator), y.dtype), threshold)


def _norm_consts(mean, std, dtype, device) -> tuple[Tensor, Tensor]:
    if len(mean) != len(std) or min(std) <= 0:
        raise ValueError(f"normalize: mean={mean} and std={std} must have equal lengths and std > 0")
    scale = [1.0 / s for s in std]
    shift = [-m / s for m, s in zip(mean, std)]
    n = len(std)
    return _const(scale, (1, n, 1, 1), device, dtype), _const(shift, (1, n, 1, 1), device, dtype)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel (uint8 input is converted to [0, 1] first)."""
    x = to_float(x)
    scale, shift = _norm_consts(mean, std, x.dtype, x.device)
    return torch.addcmul(shift, x, scale)


# --------------------------------------------------------------------------------------------
# random resized crop + flip
# --------------------------------------------------------------------------------------------


def sample_crop_boxes(
    x: Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
    tries: int = 10,
) -> Tensor:
    """torchvision ``RandomResizedCrop.get_params`` per sample -> (B, 4) long [top, left, h, w].

    Each sample draws ``tries`` candidates (area fraction U(scale), log-uniform aspect ratio) and
    keeps the first that fits; if none fits, torchvision's centre-crop fallback.
    """
    B, _, H, W = x.shape
    if scale[0] > scale[1] or ratio[0] > ratio[1]:
        raise ValueError(f"random_resized_crop: scale {scale} and ratio {ratio} must be (min, max)")
    area = float(H * W)
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    u = _rand((B, tries, 2), x, generator)
    target = area * (u[..., 0] * (scale[1] - scale[0]) + scale[0])
    ar = torch.exp(u[..., 1] * (lr1 - lr0) + lr0)
    w = torch.sqrt(target * ar).round()
    h = torch.sqrt(target / ar).round()
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    anyok = ok.any(dim=1)
    # torchvision's fallback
    in_ratio = W / H
    if in_ratio < min(ratio):
        fw, fh = W, int(round(W / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = H, int(round(H * max(ratio)))
    else:
        fw, fh = W, H
    w = torch.where(anyok, w.gather(1, first).squeeze(1), float(fw))
    h = torch.where(anyok, h.gather(1, first).squeeze(1), float(fh))
    off = _rand((B, 2), x, generator)
    top = torch.where(anyok, (off[:, 0] * (H - h + 1)).floor().clamp_max(H - h), float((H - fh) // 2))
    left = torch.where(anyok, (off[:, 1] * (W - w + 1)).floor().clamp_max(W - w), float((W - fw) // 2))
    return torch.stack((top, left, h, w), 1).to(torch.long)


def _cubic(t: Tensor, a: float) -> Tensor:
    """Keys cubic convolution kernel of |t|."""
    t = t.abs()
    t2, t3 = t * t, t * t * t
    near = (a + 2.0) * t3 - (a + 3.0) * t2 + 1.0
    far = a * t3 - 5.0 * a * t2 + 8.0 * a * t - 4.0 * a
    return torch.where(t < 1.0, near, torch.where(t < 2.0, far, torch.zeros_like(t)))


def _resample_matrix(
    start: Tensor,
    length: Tensor,
    in_size: int,
    out_size: int,
    interpolation: str,
    antialias: bool,
    flip: Tensor | None = None,
) -> Tensor:
    """(n, out, in) per-sample 1-D resampling matrices reproducing ``F.resize`` of the crop
    ``[start, start + length)`` to ``out_size`` (torch's ``interpolate`` rules: half-pixel
    centres, edge clamping within the crop, PIL-style filters when ``antialias``).
    ``flip`` (n,) bool reverses the output axis."""
    dev = start.device
    n = start.shape[0]
    L = length.to(torch.float32).view(n, 1, 1)
    scale = L / out_size
    u = torch.arange(out_size, device=dev, dtype=torch.float32).view(1, out_size, 1)
    if flip is not None:
        u = torch.where(flip.view(n, 1, 1), (out_size - 1) - u, u)
    bicubic = interpolation == "bicubic"
    if antialias:
        interp = 4.0 if bicubic else 2.0
        max_scale = max(in_size / out_size, 1.0)
        taps = int(math.ceil(interp * max_scale)) + 2
        down = scale >= 1.0
        support = torch.where(down, interp * 0.5 * scale, interp * 0.5)
        invscale = torch.where(down, 1.0 / scale, 1.0)
        center = scale * (u + 0.5)
        xmin = (center - support + 0.5).trunc().clamp_min(0.0)
        xmax = torch.minimum((center + support + 0.5).trunc(), L)
        j = torch.arange(taps, device=dev, dtype=torch.float32).view(1, 1, taps)
        pos = xmin + j
        d = (pos - center + 0.5) * invscale
        if bicubic:
            w = _cubic(d, -0.5)
        else:
            w = (1.0 - d.abs()).clamp_min(0.0)
        w = torch.where(pos < xmax, w, 0.0)
        w = w / w.sum(dim=2, keepdim=True)
        idx = torch.minimum(pos, L - 1)
    else:
        real = scale * (u + 0.5) - 0.5
        if bicubic:
            i0 = torch.minimum(real.floor(), L - 1)
            t = (real - i0).clamp(0.0, 1.0)
            offs = torch.arange(-1, 3, device=dev, dtype=torch.float32).view(1, 1, 4)
            w = _cubic(t - offs, -0.75)
            idx = (i0 + offs).clamp(min=torch.zeros_like(L), max=L - 1)
        else:
            real = real.clamp_min(0.0)
            i0 = torch.minimum(real.floor(), L - 1)
            lam = (real - i0).clamp(0.0, 1.0)
            i1 = torch.minimum(i0 + 1.0, L - 1)
            w = torch.cat((1.0 - lam, lam), dim=2)
            idx = torch.cat((i0, i1), dim=2)
    idx = (idx + start.to(torch.float32).view(n, 1, 1)).to(torch.long)
    m = torch.zeros(n, out_size, in_size, device=dev, dtype=torch.float32)
    return m.scatter_add_(2, idx, w)


def _grid_crop(xf: Tensor, boxes: Tensor, size: int, flip: Tensor | None) -> Tensor:
    """Bilinear resized crop via one grid_sample; exact for non-downscaling crops."""
    n, _, H, W = xf.shape
    dev = xf.device
    u = torch.arange(size, device=dev, dtype=torch.float32).view(1, size)
    top, left, h, w = (boxes[:, i].to(torch.float32).view(n, 1) for i in range(4))
    uy = u
    ux = torch.where(flip.view(n, 1), (size - 1) - u, u) if flip is not None else u
    ys = torch.minimum((h / size * (uy + 0.5) - 0.5).clamp_min(0.0), h - 1) + top
    xs = torch.minimum((w / size * (ux + 0.5) - 0.5).clamp_min(0.0), w - 1) + left
    gy = ys * (2.0 / max(H - 1, 1)) - 1.0
    gx = xs * (2.0 / max(W - 1, 1)) - 1.0
    grid = torch.stack((gx.view(n, 1, size).expand(n, size, size), gy.view(n, size, 1).expand(n, size, size)), dim=3)
    return F.grid_sample(xf, grid.to(xf.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def _crop_block(
    xb: Tensor,
    boxes: Tensor,
    flip: Tensor | None,
    size: int,
    interpolation: str,
    antialias: bool,
    dtype: torch.dtype,
) -> Tensor:
    """Resized crop of a block (uint8 or float) -> float in [0, 1] of shape (n, 3, size, size)."""
    n, _, H, W = xb.shape
    u8 = not xb.is_floating_point()
    xf = xb.to(dtype) if u8 else xb
    # bilinear without downscaling: one grid_sample, exact (antialias only matters downscaling)
    if interpolation == "bilinear" and (not antialias or (H <= size and W <= size)) and H > 1 and W > 1:
        y = _grid_crop(xf, boxes, size, flip)
        return y.mul_(1.0 / 255.0) if u8 else y
    my = _resample_matrix(boxes[:, 0], boxes[:, 2], H, size, interpolation, antialias)
    mx = _resample_matrix(boxes[:, 1], boxes[:, 3], W, size, interpolation, antialias, flip)
    if u8:
        my = my * (1.0 / 255.0)
    my, mx = my.to(xf.dtype), mx.to(xf.dtype)
    t = torch.bmm(xf.reshape(n, 3 * H, W), mx.transpose(1, 2)).view(n, 3, H, size)  # along W
    y = torch.matmul(my.unsqueeze(1), t)  # along H: (n,1,S,H) @ (n,3,H,S) -> (n,3,S,S)
    if interpolation == "bicubic":
        y.clamp_(0.0, 1.0)
    return y


def resized_crop(
    x: Tensor,
    boxes: Tensor,
    size: int,
    flip: Tensor | None = None,
    interpolation: str = "bilinear",
    antialias: bool = True,
) -> Tensor:
    """Per-sample ``F.resized_crop(x_i, top, left, h, w, [size, size])`` (then hflip where
    ``flip``); ``boxes`` (B, 4) long [top, left, h, w]. Returns float in [0, 1]."""
    _check_batch(x)
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"resized_crop: interpolation={interpolation!r}; allowed: 'bilinear', 'bicubic'")
    boxes = boxes.to(x.device)
    return _crop_block(x, boxes, flip, size, interpolation, antialias, _float_dtype(x))


def random_resized_crop(
    x: Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
    interpolation: str = "bilinear",
    antialias: bool = True,
) -> Tensor:
    """``RandomResizedCrop(size, scale, ratio)`` per sample -> float (B, 3, size, size)."""
    _check_batch(x)
    boxes = sample_crop_boxes(x, scale, ratio, generator)
    return resized_crop(x, boxes, size, None, interpolation, antialias)


def random_flip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """``RandomHorizontalFlip(p)`` per sample; returns float in [0, 1]."""
    _check_batch(x)
    y = _owned_float(x)
    if p <= 0:
        return y
    return y.lerp_(y.flip(3), _bcast(_coin(y, p, generator), y.dtype))


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------


def _pair(v, name: str) -> tuple[float, float]:
    if len(v) != 2 or v[0] > v[1]:
        raise ValueError(f"SSLAugment: {name}={v} must be a (min, max) pair")
    return float(v[0]), float(v[1])


class SSLAugment(nn.Module):
    """One view of the SimCLR/SimSiam/BYOL augmentation, on a whole batch.

    crop (RandomResizedCrop(size, crop_scale)) -> flip(0.5) -> RandomApply(ColorJitter(*jitter),
    jitter_prob) -> RandomGrayscale(grayscale_prob) -> RandomApply(GaussianBlur, blur_prob)
    -> RandomSolarize(0.5, solarize_prob) -> Normalize(mean, std) if given.

    ``crop=False`` skips crop and flip (the FFCV path has done them while decoding): the input
    must already be ``size`` x ``size`` (it is resized if not) and is only converted to float
    and colour-augmented. Call it once per view; each call draws fresh parameters.
    """

    def __init__(
        self,
        size: int,
        crop: bool = True,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        flip: bool = True,
        jitter: tuple[float, float, float, float] | None = (0.4, 0.4, 0.4, 0.1),
        jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        blur_prob: float = 0.0,
        solarize_prob: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: str = "bilinear",
        antialias: bool = True,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel: int | None = None,
        solarize_threshold: float = 0.5,
        block_size: int | None = None,
        cpu_kernel: bool = True,
    ):
        super().__init__()
        if size < 1:
            raise ValueError(f"SSLAugment: size={size} must be positive")
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"SSLAugment: interpolation={interpolation!r}; allowed: 'bilinear', 'bicubic'")
        for name, pv in (("jitter_prob", jitter_prob), ("grayscale_prob", grayscale_prob), ("blur_prob", blur_prob), ("solarize_prob", solarize_prob)):
            if not 0.0 <= pv <= 1.0:
                raise ValueError(f"SSLAugment: {name}={pv} must be in [0, 1]")
        if (mean is None) != (std is None):
            raise ValueError("SSLAugment: give both mean and std, or neither")
        if jitter is not None and len(jitter) != 4:
            raise ValueError(f"SSLAugment: jitter={jitter} must be (brightness, contrast, saturation, hue)")
        self.size = int(size)
        self.crop = bool(crop)
        self.crop_scale = _pair(crop_scale, "crop_scale")
        self.crop_ratio = _pair(crop_ratio, "crop_ratio")
        self.flip = bool(flip)
        self.jitter = tuple(float(v) for v in jitter) if jitter is not None else None
        self.jitter_prob = float(jitter_prob) if jitter is not None and any(jitter) else 0.0
        self.grayscale_prob = float(grayscale_prob)
        self.blur_prob = float(blur_prob)
        self.blur_sigma = _pair(blur_sigma, "blur_sigma")
        self.blur_kernel = int(blur_kernel) if blur_kernel else blur_kernel_size(self.size)
        if self.blur_kernel % 2 == 0:
            raise ValueError(f"SSLAugment: blur_kernel={blur_kernel} must be odd")
        self.solarize_prob = float(solarize_prob)
        self.solarize_threshold = float(solarize_threshold)
        self.interpolation = interpolation
        self.antialias = bool(antialias)
        self.block_size = block_size
        self.cpu_kernel = bool(cpu_kernel)
        self.mean = tuple(float(v) for v in mean) if mean is not None else None
        self.std = tuple(float(v) for v in std) if std is not None else None
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"SSLAugment: std={std} must be positive")

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, crop={self.crop}, crop_scale={self.crop_scale}, flip={self.flip}, "
            f"jitter={self.jitter}, jitter_prob={self.jitter_prob}, grayscale_prob={self.grayscale_prob}, "
            f"blur_prob={self.blur_prob}, solarize_prob={self.solarize_prob}, mean={self.mean}, std={self.std}"
        )

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_batch(x)
        dtype = _float_dtype(x)
        S = self.size
        if not self.crop and tuple(x.shape[-2:]) != (S, S):
            x = F.interpolate(to_float(x, dtype), size=(S, S), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)

        # ---- draw every parameter for the whole batch (fixed order -> reproducible) ----
        boxes = flips = None
        if self.crop:
            boxes = sample_crop_boxes(x, self.crop_scale, self.crop_ratio, generator)
            if self.flip:
                flips = _coin(x, 0.5, generator)
        plan = perm = params = None
        if self.jitter_prob > 0:
            params = sample_jitter_params(x, *self.jitter, p=self.jitter_prob, generator=generator)
        gray = _bcast(_coin(x, self.grayscale_prob, generator), dtype) if self.grayscale_prob > 0 else None
        # the colour stage: one compiled per-sample kernel on CPU (colour_cpu), else the eager
        # ops in a hue-position visiting order; both consume the parameters drawn above
        kernel = None
        if (params is not None or gray is not None) and self.cpu_kernel and colour_cpu.available(x.device, dtype):
            B = x.shape[0]
            kernel = (params.apply if params is not None else torch.zeros(B, dtype=torch.bool),
                      params.factors if params is not None else torch.zeros(B, 4),
                      params.order if params is not None else torch.zeros(B, 4, dtype=torch.long),
                      gray.view(B) if gray is not None else torch.zeros(B, dtype=dtype))
        elif params is not None:
            plan = _JitterPlan(params, dtype, p_is_one=self.jitter_prob >= 1)
            perm = params.perm
        sigma = None
        if self.blur_prob > 0 and self.blur_kernel > 1:
            sigma = _blur_sigma(x, self.blur_prob, self.blur_sigma, generator)
        sol = _bcast(_coin(x, self.solarize_prob, generator), dtype) if self.solarize_prob > 0 else None
        norm = _norm_consts(self.mean, self.std, dtype, x.device) if self.mean is not None else None
        if perm is not None:  # per-sample parameters in visiting order; blocks slice them
            boxes, flips, gray, sigma, sol = (None if t is None else t.index_select(0, perm) for t in (boxes, flips, gray, sigma, sol))

        def block(xb: Tensor, s: int, e: int, dst: Tensor) -> Tensor:
            if self.crop:
                y = _crop_block(xb, boxes[s:e], None if flips is None else flips[s:e], S, self.interpolation, self.antialias, dtype)
            else:
                y = _float_block(xb, dst)
            if kernel is not None:
                y = colour_cpu.colour_(y, *(t[s:e] for t in kernel))
            else:
                if plan is not None:
                    y = plan.block_(y, s, e)
                if gray is not None:
                    y = _grayscale_(y, gray[s:e])
            if sigma is not None:
                y = _blur(y, sigma[s:e], self.blur_kernel)
            if sol is not None:
                y = _solarize_(y, sol[s:e], self.solarize_threshold)
            if norm is not None:
                y = torch.addcmul(norm[1], y, norm[0], out=y)
            return y

        return _run_blocks(x, perm, self.block_size, block, (3, S, S), dtype)


class EvalTransform(nn.Module):
    """uint8 -> float [0, 1]; optional resize (shorter side to ``resize``, default ``size``)
    and centre crop to ``size``; optional normalisation. Deterministic."""

    def __init__(
        self,
        size: int | None = None,
        resize: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        antialias: bool = True,
    ):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("EvalTransform: give both mean and std, or neither")
        self.size = size
        self.resize = resize if resize is not None else size
        self.antialias = antialias
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        _check_batch(x)
        y = to_float(x)
        H, W = y.shape[-2:]
        if self.size is not None and (H, W) != (self.size, self.size):
            r = self.resize
            if min(H, W) != r:
                nh, nw = (r, max(1, int(r * W / H))) if H <= W else (max(1, int(r * H / W)), r)
                y = F.interpolate(y, size=(nh, nw), mode="bilinear", align_corners=False, antialias=self.antialias).clamp_(0, 1)
                H, W = nh, nw
            top, left = int(round((H - self.size) / 2.0)), int(round((W - self.size) / 2.0))
            y = y[:, :, top : top + self.size, left : left + self.size]
        if y is x:
            y = y.clone()
        if self.mean is not None:
            y = normalize(y, self.mean, self.std)
        return y.contiguous()


# --------------------------------------------------------------------------------------------
# micro-benchmark: python -m mpcl.data.augment
# --------------------------------------------------------------------------------------------


def _bench() -> None:  # pragma: no cover - manual tool
    import argparse
    import statistics
    import time

    ap = argparse.ArgumentParser(description="SSLAugment throughput (uint8 input, one view per call)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--no-malloc-tune", action="store_true", help="leave glibc malloc as is")
    ap.add_argument("--only", type=int, default=None, help="only this image size")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not a.no_malloc_tune and a.device == "cpu":
        print("tune_cpu_malloc:", tune_cpu_malloc())
    dev = torch.device(a.device)
    cases = [(32, 512, False, 0.0), (32, 512, True, 0.0), (96, 128, False, 0.5), (96, 128, True, 0.5), (224, 128, False, 0.5), (224, 128, True, 0.5)]
    print(f"torch {torch.__version__}, {a.threads} threads, device {dev}; recipe: jitter (0.4,0.4,0.4,0.1) p=0.8, gray p=0.2")
    for size, B, crop, blur in cases:
        if a.only is not None and size != a.only:
            continue
        aug = SSLAugment(size, crop=crop, blur_prob=blur, block_size=a.block_size)
        x = torch.randint(0, 256, (B, 3, size, size), dtype=torch.uint8, device=dev)
        g = torch.Generator(device=dev).manual_seed(0)
        for _ in range(2):
            aug(x, g)
        times, cpu = [], []
        for _ in range(a.reps):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t, c = time.perf_counter(), time.process_time()
            aug(x, g)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        best, med = min(times), statistics.median(times)
        print(
            f"size={size:3d} batch={B:3d} crop={crop!s:5} blur_p={blur}: "
            f"median {B / med:9.0f} samples/s ({med * 1e3:6.1f} ms/batch), best {B / best:9.0f} samples/s, "
            f"per CPU-second {B / statistics.median(cpu):9.0f}"
        )


if __name__ == "__main__":
    _bench()
