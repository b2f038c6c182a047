"""The transforms as ``nn.Module``s: ``SSLAugment`` (one training view, every stage fused over
cache-sized blocks) and ``EvalTransform`` (deterministic evaluation preprocessing)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpcl.data.augment import colour_cpu
from mpcl.data.augment.blur import blur_, blur_kernel_size, draw_blur_sigma
from mpcl.data.augment.colour import grayscale_, norm_consts, normalize, solarize_
from mpcl.data.augment.crop import crop_block, sample_crop_boxes
from mpcl.data.augment.jitter import JitterPlan, sample_jitter_params
from mpcl.data.augment.tensors import (bcast, check_batch, coin, float_block, float_dtype,
                                       run_blocks, to_float)


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
        for name, pv in (("jitter_prob", jitter_prob), ("grayscale_prob", grayscale_prob), ("blur_prob", blur_prob),
                         ("solarize_prob", solarize_prob)):
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
        check_batch(x)
        dtype = float_dtype(x)
        S = self.size
        if not self.crop and tuple(x.shape[-2:]) != (S, S):
            x = F.interpolate(to_float(x, dtype), size=(S, S), mode="bilinear", align_corners=False,
                              antialias=True).clamp_(0, 1)
        draws = self._draw(x, dtype, generator)
        return run_blocks(x, draws.perm, self.block_size, partial(self._block, draws, dtype), (3, S, S), dtype)

    def _draw(self, x: Tensor, dtype: torch.dtype, generator: torch.Generator | None) -> _Draws:
        """Every random parameter of the batch, drawn in a fixed order (reproducible), then put
        in the visiting order of the jitter when the eager colour path needs one."""
        d = _Draws()
        if self.crop:
            d.boxes = sample_crop_boxes(x, self.crop_scale, self.crop_ratio, generator)
            if self.flip:
                d.flips = coin(x, 0.5, generator)
        params = None
        if self.jitter_prob > 0:
            params = sample_jitter_params(x, *self.jitter, p=self.jitter_prob, generator=generator)
        d.gray = bcast(coin(x, self.grayscale_prob, generator), dtype) if self.grayscale_prob > 0 else None
        # the colour stage: one compiled per-sample kernel on CPU (colour_cpu), else the eager
        # ops in a hue-position visiting order; both consume the parameters drawn above
        if (params is not None or d.gray is not None) and self.cpu_kernel and colour_cpu.available(x.device, dtype):
            B = x.shape[0]
            d.kernel = (params.apply if params is not None else torch.zeros(B, dtype=torch.bool),
                        params.factors if params is not None else torch.zeros(B, 4),
                        params.order if params is not None else torch.zeros(B, 4, dtype=torch.long),
                        d.gray.view(B) if d.gray is not None else torch.zeros(B, dtype=dtype))
        elif params is not None:
            d.jitter = JitterPlan(params, dtype, p_is_one=self.jitter_prob >= 1)
            d.perm = params.perm
        if self.blur_prob > 0 and self.blur_kernel > 1:
            d.sigma = draw_blur_sigma(x, self.blur_prob, self.blur_sigma, generator)
        d.sol = bcast(coin(x, self.solarize_prob, generator), dtype) if self.solarize_prob > 0 else None
        d.norm = norm_consts(self.mean, self.std, dtype, x.device) if self.mean is not None else None
        if d.perm is not None:  # per-sample parameters in visiting order; blocks slice them
            d.boxes, d.flips, d.gray, d.sigma, d.sol = (
                None if t is None else t.index_select(0, d.perm) for t in (d.boxes, d.flips, d.gray, d.sigma, d.sol))
        return d

    def _block(self, d: _Draws, dtype: torch.dtype, xb: Tensor, s: int, e: int, dst: Tensor) -> Tensor:
        """The view of block ``xb`` = the samples of ranks ``s:e``; ``dst`` its output slice."""
        if self.crop:
            y = crop_block(xb, d.boxes[s:e], None if d.flips is None else d.flips[s:e], self.size,
                           self.interpolation, self.antialias, dtype)
        else:
            y = float_block(xb, dst)
        if d.kernel is not None:
            y = colour_cpu.colour_(y, *(t[s:e] for t in d.kernel))
        else:
            if d.jitter is not None:
                y = d.jitter.block_(y, s, e)
            if d.gray is not None:
                y = grayscale_(y, d.gray[s:e])
        if d.sigma is not None:
            y = blur_(y, d.sigma[s:e], self.blur_kernel)
        if d.sol is not None:
            y = solarize_(y, d.sol[s:e], self.solarize_threshold)
        if d.norm is not None:
            y = torch.addcmul(d.norm[1], y, d.norm[0], out=y)
        return y


@dataclass
class _Draws:
    """One call's per-sample parameters (None: the stage is off)."""

    boxes: Tensor | None = None        # (B, 4) crop boxes
    flips: Tensor | None = None        # (B,) bool
    kernel: tuple | None = None        # colour_cpu.colour_ arguments (apply, factors, order, gray)
    jitter: JitterPlan | None = None   # eager colour jitter
    perm: Tensor | None = None         # visiting order of the eager jitter
    gray: Tensor | None = None         # (B, 1, 1, 1) 0/1
    sigma: Tensor | None = None        # (B,) blur sigma, 0 = no blur
    sol: Tensor | None = None          # (B, 1, 1, 1) 0/1
    norm: tuple | None = None          # (scale, shift)


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
        check_batch(x)
        y = to_float(x)
        H, W = y.shape[-2:]
        if self.size is not None and (self.size, self.size) != (H, W):
            r = self.resize
            if min(H, W) != r:
                nh, nw = (r, max(1, int(r * W / H))) if H <= W else (max(1, int(r * H / W)), r)
                y = F.interpolate(y, size=(nh, nw), mode="bilinear", align_corners=False,
                                  antialias=self.antialias).clamp_(0, 1)
                H, W = nh, nw
            top, left = int(round((H - self.size) / 2.0)), int(round((W - self.size) / 2.0))
            y = y[:, :, top : top + self.size, left : left + self.size]
        if y is x:
            y = y.clone()
        if self.mean is not None:
            y = normalize(y, self.mean, self.std)
        return y.contiguous()
