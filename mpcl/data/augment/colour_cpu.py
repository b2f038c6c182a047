"""The colour stage of ``SSLAugment`` (per-sample colour jitter, then random grayscale) as one
compiled CPU kernel.

The eager tensor version (:mod:`.colour`, :mod:`.jitter`) makes about 30 elementwise passes
over every block; this kernel does one sample at a time in cache, each op a loop over its
pixels, in the sample's own drawn op order, which is faster on CPU. It consumes the same ``JitterParams``
and grayscale coins as the eager path, so with one seed both give the same views to float
rounding (~1e-6), and both follow torchvision's ``adjust_*`` formulas.

Threads: the kernel is compiled ``nogil`` without numba's parallel layer (FFCV launches
numba-parallel decoders from its own thread; numba's default ``workqueue`` layer aborts on
concurrent launches), and a batch is split into ``torch.get_num_threads()`` chunks run on a
small thread pool. Compiled once per dtype and cached on disk (``cache=True``).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from mpcl.data.augment.constants import GRAY_WEIGHTS, HUE_CENTER

SUPPORTED_DTYPES = (torch.float32, torch.float64)


@functools.lru_cache(maxsize=1)
def _kernel():
    """The compiled kernel, or None when numba is not installed."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba comes with ffcv
        return None
    luma_r, luma_g, luma_b = GRAY_WEIGHTS   # compile-time constants in the kernel
    hue_r, hue_g, hue_b = HUE_CENTER

    @numba.njit(nogil=True, cache=True, inline="always")
    def clamp01(v):
        return min(max(v, 0.0), 1.0)

    @numba.njit(nogil=True, cache=True)
    def colour_(y, apply, factors, order, gray, start, stop):  # pragma: no cover - compiled
        # y: (B, 3, N) C-contiguous float, in place. Samples start..stop-1.
        # factors (B, 4) [brightness, contrast, saturation, hue]; order (B, 4) op ids 0..3
        wr, wg, wb = y.dtype.type(luma_r), y.dtype.type(luma_g), y.dtype.type(luma_b)
        one, six = y.dtype.type(1.0), y.dtype.type(6.0)
        n = y.shape[2]
        for b in range(start, stop):
            r, g, bl = y[b, 0], y[b, 1], y[b, 2]
            if apply[b]:
                for k in range(4):
                    op = order[b, k]
                    f = y.dtype.type(factors[b, op])
                    if op == 0:    # brightness: blend with black
                        for i in range(n):
                            r[i] = clamp01(f * r[i])
                            g[i] = clamp01(f * g[i])
                            bl[i] = clamp01(f * bl[i])
                    elif op == 1:  # contrast: blend with the mean of the grayscale image
                        s = y.dtype.type(0.0)
                        for i in range(n):
                            s += r[i] * wr + g[i] * wg + bl[i] * wb
                        m = (one - f) * (s / n)
                        for i in range(n):
                            r[i] = clamp01(f * r[i] + m)
                            g[i] = clamp01(f * g[i] + m)
                            bl[i] = clamp01(f * bl[i] + m)
                    elif op == 2:  # saturation: blend with the grayscale image
                        for i in range(n):
                            q = (r[i] * wr + g[i] * wg + bl[i] * wb) * (one - f)
                            r[i] = clamp01(f * r[i] + q)
                            g[i] = clamp01(f * g[i] + q)
                            bl[i] = clamp01(f * bl[i] + q)
                    elif f != 0.0:  # hue: rotate H in HSV (torchvision's branch order)
                        for i in range(n):
                            cr_, cg, cb = r[i], g[i], bl[i]
                            mx = max(cr_, max(cg, cb))
                            c = mx - min(cr_, min(cg, cb))
                            if c <= 0.0:  # gray pixel: no hue, unchanged
                                continue
                            if mx == cr_:
                                h = (cg - cb) / c
                            elif mx == cg:
                                h = (cb - cr_) / c + 2.0
                            else:
                                h = (cr_ - cg) / c + 4.0
                            h += f * six
                            h -= np.floor(h / six) * six
                            # channel = max - c * clamp(| |h - a| - 3 | - 1, 0, 1), a = the
                            # hue at which the channel is the minimum (colour.rotate_hue)
                            r[i] = mx - c * min(max(abs(abs(h - hue_r) - 3.0) - 1.0, 0.0), 1.0)
                            g[i] = mx - c * min(max(abs(abs(h - hue_g) - 3.0) - 1.0, 0.0), 1.0)
                            bl[i] = mx - c * min(max(abs(abs(h - hue_b) - 3.0) - 1.0, 0.0), 1.0)
            if gray[b] > 0.5:
                for i in range(n):
                    q = r[i] * wr + g[i] * wg + bl[i] * wb
                    r[i] = q
                    g[i] = q
                    bl[i] = q

    return colour_


@functools.lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mpcl-colour")


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``colour_`` can run on a batch of ``dtype`` on ``device`` (CPU, float32/64, numba)."""
    return device.type == "cpu" and dtype in SUPPORTED_DTYPES and _kernel() is not None


def colour_(y: Tensor, apply: Tensor, factors: Tensor, order: Tensor, gray: Tensor) -> Tensor:
    """For each sample i of ``y`` (n, 3, H, W), float in [0, 1], with ``apply[i]``: the four
    jitter ops in ``order[i]`` with ``factors[i]`` (op ids and columns: 0 brightness,
    1 contrast, 2 saturation, 3 hue); then grayscale where ``gray[i]`` is 1. ``apply`` bool
    (n,), ``factors`` (n, 4), ``order`` long (n, 4), ``gray`` 0/1 (n,). In place when ``y`` is
    contiguous (else on a contiguous copy); returns the result.
    """
    y = y.contiguous()
    kernel = _kernel()
    n = y.shape[0]
    arrays = (y.view(n, 3, -1).numpy(), apply.numpy(), factors.to(y.dtype).numpy(),
              order.numpy(), gray.reshape(n).to(y.dtype).numpy())
    threads = max(1, min(torch.get_num_threads(), n))
    if threads == 1:
        kernel(*arrays, 0, n)
        return y
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    jobs = [_pool(threads).submit(kernel, *arrays, int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:])]
    for job in jobs:
        job.result()
    return y
