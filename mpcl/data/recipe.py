"""The config's ``data`` section as augmentation modules and evaluation batch sizes, shared by
the torch and the FFCV loaders."""

from __future__ import annotations

from mpcl.config import Config
from mpcl.data.augment import EvalTransform, SSLAugment
from mpcl.data.datasets import DatasetSpec

SMALL_CROP_SCALE = (0.05, 0.14)   # SwAV's small crops
VAL_PAIRS = 2048  # validation samples whose two views measure alignment / uniformity


def _colour_augment(cfg: Config, spec: DatasetSpec, size: int, crop: bool,
                    crop_scale: tuple[float, float]) -> SSLAugment:
    d = cfg.data
    s = d.jitter_strength
    return SSLAugment(
        size, crop=crop, crop_scale=crop_scale,
        jitter=(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s), jitter_prob=d.jitter_prob,
        grayscale_prob=d.grayscale_prob, blur_prob=d.blur_prob, solarize_prob=d.solarize_prob,
        mean=spec.mean if d.normalize else None, std=spec.std if d.normalize else None,
    )


def ssl_augment(cfg: Config, spec: DatasetSpec, crop: bool = True) -> SSLAugment:
    """One full-size training view (``crop=False``: the FFCV decoder has cropped already)."""
    return _colour_augment(cfg, spec, spec.image_size, crop, (cfg.data.crop_scale_min, 1.0))


def small_crop_size(cfg: Config, spec: DatasetSpec) -> int:
    """data.small_crop_size, or 96/224 of the image side (SwAV's ratio), at least 8 pixels."""
    return cfg.data.small_crop_size or max(8, round(spec.image_size * 96 / 224))


def small_crop_augment(cfg: Config, spec: DatasetSpec) -> SSLAugment:
    """Multi-crop's low-resolution views: the same colour pipeline, crops of 5-14% of the image."""
    return _colour_augment(cfg, spec, small_crop_size(cfg, spec), True, SMALL_CROP_SCALE)


def eval_transform(cfg: Config, spec: DatasetSpec) -> EvalTransform:
    norm = cfg.data.normalize
    return EvalTransform(spec.image_size, mean=spec.mean if norm else None, std=spec.std if norm else None)


def eval_batch_size(cfg: Config) -> int:
    return max(cfg.data.batch_size, 512)


def val_pair_count(n_val: int, world: int) -> int:
    """How many validation samples the alignment / uniformity pairs use (a multiple of world)."""
    return min(VAL_PAIRS, n_val) // world * world
