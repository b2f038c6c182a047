"""Batch plumbing shared by every transform: input checks, dtype conversion, per-sample random
draws that never block an accelerator stream, cached constants, and the block runner that
walks a batch in cache-sized blocks (in an optional visiting order) on CPU."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# CPU block size for the fused pipelines: ~bytes of one float32 block tensor (about L2), and
# the fewest samples per block (below that Python overhead per op dominates).
_CPU_BLOCK_BYTES = 1536 * 1024
_CPU_MIN_BLOCK = 8


def check_batch(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a batch of RGB images (B, 3, H, W), got shape {tuple(x.shape)}")


def float_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def to_float(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """uint8 (0..255) -> float in [0, 1]; float input is returned as is (cast to ``dtype``)."""
    if x.is_floating_point():
        return x if dtype is None or x.dtype == dtype else x.to(dtype)
    return x.to(dtype or torch.float32).mul_(1.0 / 255.0)


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Move a small tensor to ``device`` without blocking the host on a CUDA stream."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def rand(shape: Sequence[int] | int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) float32 on x's device, drawn on the generator's device."""
    dev = generator.device if generator is not None else x.device
    return to_device(torch.rand(shape, generator=generator, device=dev), x.device)


def randperm(n: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    dev = generator.device if generator is not None else x.device
    return to_device(torch.randperm(n, generator=generator, device=dev), x.device)


def coin(x: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    """Per-sample Bernoulli(p) as a bool tensor (B,)."""
    return rand(x.shape[0], x, generator) < p


_CONSTS: dict[tuple, Tensor] = {}


def const(values: Sequence[float], shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
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


def per_sample(v: Tensor | float, x: Tensor) -> Tensor:
    """A per-sample parameter as a float32 tensor (B,) on x's device."""
    if not isinstance(v, Tensor):
        return torch.full((x.shape[0],), float(v), device=x.device)
    t = to_device(v.to(torch.float32), x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"per-sample parameter must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def bcast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """(B,) -> (B, 1, 1, 1) in dtype."""
    return t.to(dtype).view(-1, 1, 1, 1)


def _block_len(n: int, per_sample_elems: int, device: torch.device, block_size: int | None) -> int:
    if block_size is not None:
        return max(1, int(block_size))
    if device.type != "cpu":
        return max(1, n)
    return max(_CPU_MIN_BLOCK, _CPU_BLOCK_BYTES // (4 * max(1, per_sample_elems)))


def owned_float(x: Tensor) -> Tensor:
    """A float copy of x that the caller may modify in place."""
    return to_float(x).clone() if x.is_floating_point() else to_float(x)


def cmp01(fn, a: Tensor, b: Tensor | float) -> Tensor:
    """Comparison as a float 0/1 tensor (torch's bool-output comparisons are slow on CPU)."""
    shape = torch.broadcast_shapes(a.shape, b.shape) if isinstance(b, Tensor) else a.shape
    return fn(a, b, out=torch.empty(shape, dtype=a.dtype, device=a.device))


def float_block(xb: Tensor, dst: Tensor) -> Tensor:
    """Block -> float in [0, 1], written into ``dst`` (the block's slice of the output)."""
    dst.copy_(xb)
    return dst if xb.is_floating_point() else dst.mul_(1.0 / 255.0)


def run_blocks(x: Tensor, perm: Tensor | None, block_size: int | None, fn, out_chw, dtype: torch.dtype) -> Tensor:
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
    # scatter back with a gather (index_select is much faster than index_copy_ on CPU)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(B, device=perm.device)
    return out.index_select(0, inv)
