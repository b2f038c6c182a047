"""Random resized crop and flip per sample, reproducing torchvision.

Boxes follow ``RandomResizedCrop.get_params`` (area fraction, log-uniform aspect ratio, 10
tries then the centre-crop fallback); the resize reproduces ``F.resized_crop(...,
antialias=...)`` (bilinear or bicubic; ``antialias=True`` is PIL's resampling, what the papers'
PIL pipelines did) as two batched matrix products, or one ``grid_sample`` where that is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mpcl.data.augment.tensors import bcast, check_batch, coin, float_dtype, owned_float, rand


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
    u = rand((B, tries, 2), x, generator)
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
    off = rand((B, 2), x, generator)
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


def crop_block(
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
    if interpolation == "bilinear" and (not antialias or (size >= H and size >= W)) and H > 1 and W > 1:
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
    check_batch(x)
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"resized_crop: interpolation={interpolation!r}; allowed: 'bilinear', 'bicubic'")
    boxes = boxes.to(x.device)
    return crop_block(x, boxes, flip, size, interpolation, antialias, float_dtype(x))


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
    check_batch(x)
    boxes = sample_crop_boxes(x, scale, ratio, generator)
    return resized_crop(x, boxes, size, None, interpolation, antialias)


def random_flip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """``RandomHorizontalFlip(p)`` per sample; returns float in [0, 1]."""
    check_batch(x)
    y = owned_float(x)
    if p <= 0:
        return y
    return y.lerp_(y.flip(3), bcast(coin(y, p, generator), y.dtype))
