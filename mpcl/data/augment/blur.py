"""Per-sample gaussian blur (torchvision's kernel, reflect padding) as grouped convolutions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mpcl.data.augment.tensors import check_batch, coin, owned_float, per_sample, rand


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


def blur_(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
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
    check_batch(x)
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"gaussian_blur: kernel_size={kernel_size} must be odd and positive")
    y = owned_float(x)
    return blur_(y, per_sample(sigma, y), kernel_size)


def draw_blur_sigma(x: Tensor, p: float, sigma: tuple[float, float], generator) -> Tensor:
    apply = coin(x, p, generator)
    s = rand(x.shape[0], x, generator) * (sigma[1] - sigma[0]) + sigma[0]
    return torch.where(apply, s, 0.0)


def gaussian_blur(
    x: Tensor,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``RandomApply([GaussianBlur(k, sigma)], p)`` per sample; sigma ~ U(sigma) per sample."""
    check_batch(x)
    y = owned_float(x)
    k = kernel_size or blur_kernel_size(min(y.shape[-2:]))
    if p <= 0 or k <= 1:
        return y
    return blur_(y, draw_blur_sigma(y, p, sigma, generator), k)
