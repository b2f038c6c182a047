"""Loaders: the one place that decides how batches reach the training device.

``build_loaders(cfg, rank, world, device)`` returns the training loader (two augmented
views, index, label) and the two evaluation loaders (train split without augmentation for
the kNN bank, validation split). ``data.loader=ffcv`` reads .beton files
(``mpcl.data.ffcv_loader``); ``data.loader=torch`` (the fallback for users without FFCV)
keeps the uint8 images of an array dataset in memory, slices batches by index and augments
them as whole batches on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from mpcl.config import Config, ConfigError
from mpcl.data.augment import EvalTransform, SSLAugment
from mpcl.data.batch import Batch
from mpcl.data.datasets import DatasetSpec, get_dataset
from mpcl.data import sources


class TrainLoader(Protocol):
    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...


@dataclass
class Loaders:
    train: TrainLoader                     # yields Batch
    train_eval: "EvalLoader"               # yields (images, labels): kNN bank, linear probe
    val: "EvalLoader"
    val_pairs: TrainLoader                 # two augmented views of a fixed validation subset
    spec: DatasetSpec
    num_train: int                         # samples in the (subset) training split


def ssl_augment(cfg: Config, spec: DatasetSpec, crop: bool = True) -> SSLAugment:
    d = cfg.data
    s = d.jitter_strength
    return SSLAugment(
        spec.image_size, crop=crop, crop_scale=(d.crop_scale_min, 1.0),
        jitter=(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s), jitter_prob=d.jitter_prob,
        grayscale_prob=d.grayscale_prob, blur_prob=d.blur_prob, solarize_prob=d.solarize_prob,
        mean=spec.mean if d.normalize else None, std=spec.std if d.normalize else None,
    )


SMALL_CROP_SCALE = (0.05, 0.14)   # SwAV's small crops


def small_crop_size(cfg: Config, spec: DatasetSpec) -> int:
    """data.small_crop_size, or 96/224 of the image side (SwAV's ratio), at least 8 pixels."""
    return cfg.data.small_crop_size or max(8, round(spec.image_size * 96 / 224))


def small_crop_augment(cfg: Config, spec: DatasetSpec) -> SSLAugment:
    """Multi-crop's low-resolution views: the same colour pipeline, crops of 5-14% of the image."""
    d = cfg.data
    s = d.jitter_strength
    return SSLAugment(
        small_crop_size(cfg, spec), crop=True, crop_scale=SMALL_CROP_SCALE,
        jitter=(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s), jitter_prob=d.jitter_prob,
        grayscale_prob=d.grayscale_prob, blur_prob=d.blur_prob, solarize_prob=d.solarize_prob,
        mean=spec.mean if d.normalize else None, std=spec.std if d.normalize else None,
    )


def eval_transform(cfg: Config, spec: DatasetSpec) -> EvalTransform:
    norm = cfg.data.normalize
    return EvalTransform(spec.image_size, mean=spec.mean if norm else None, std=spec.std if norm else None)


# -- raw arrays -------------------------------------------------------------------------------

def _download_fashion_mnist(root: Path) -> Path:
    """torchvision's downloader into ``root`` (used only when the idx files are absent)."""
    import torchvision

    torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
    torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    return root / "FashionMNIST" / "raw"


def load_arrays(dataset: str, path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, 3) and int64 labels of one split of an array dataset."""
    spec = get_dataset(dataset)
    root = Path(path or spec.default_path("torch"))
    if dataset == "fashion_mnist":
        if not sources.fashion_mnist_present(root):
            if path:  # an explicit path that lacks the files is the user's mistake
                raise sources.SourceError(
                    f"{root}: Fashion-MNIST idx files not found (expected train-images-idx3-ubyte.gz, "
                    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)")
            root = _download_fashion_mnist(Path("data"))
        images, labels = sources.read_fashion_mnist(root, split)
        return sources.gray_to_rgb_padded(images, 32), labels
    readers = {
        "cifar10": lambda r, s: sources.read_cifar(r, s, "cifar10"),
        "cifar100": lambda r, s: sources.read_cifar(r, s, "cifar100"),
        "stl10": sources.read_stl10,
    }
    if dataset not in readers:
        raise sources.SourceError(
            f"data.dataset={dataset!r}: the torch loader reads array datasets "
            f"(fashion_mnist, {', '.join(readers)}); use data.loader=ffcv for {dataset}")
    return readers[dataset](root, split)


# -- torch loaders ----------------------------------------------------------------------------

def _default_device_copy(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Keep the dataset on the GPU when it is small (it then never crosses PCIe again)."""
    if device.type == "cuda" and images.numel() < 2**31:
        return images.to(device)
    return images.pin_memory() if device.type == "cuda" else images


class TensorTrainLoader:
    """Global batches from a seeded permutation of the epoch; rank r takes slice r of each.

    The global batch composition is the same for any number of workers (so 1 worker and
    W workers with the same global batch see the same samples), workers see disjoint
    samples, and a resumed epoch replays exactly (the permutation and the augmentation
    generator are seeded by (seed, epoch, rank)). The last incomplete global batch is dropped.

    ``num_small_crops`` more views come from ``small_augment`` (multi-crop) after the
    ``num_views`` full-size ones. ``min_per_class`` >= 2 builds each epoch's order from groups
    of that many same-class samples (the local batch must be a multiple of it), so every class
    present in a batch has at least that many samples there (MCL's supervised form).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, global_batch: int, rank: int,
                 world: int, seed: int, augment: SSLAugment, device: torch.device, num_views: int = 2,
                 small_augment: SSLAugment | None = None, num_small_crops: int = 0, min_per_class: int = 0):
        if len(images) < global_batch:
            raise ConfigError(f"data.batch_size={global_batch}: larger than the training set ({len(images)} samples)")
        self.images = _default_device_copy(images, device)
        self.labels = labels
        self.global_batch, self.local_batch = global_batch, global_batch // world
        self.rank, self.world, self.seed = rank, world, seed
        self.augment, self.device, self.num_views = augment, device, num_views
        self.small_augment, self.num_small_crops = small_augment, num_small_crops
        if num_small_crops and small_augment is None:
            raise ValueError("num_small_crops > 0 needs small_augment")
        self.min_per_class = min_per_class
        if min_per_class and self.local_batch % min_per_class:
            raise ConfigError(f"data.min_per_class={min_per_class}: must divide the per-worker batch {self.local_batch}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _num_ordered(self) -> int:
        if not self.min_per_class:
            return len(self.images)
        counts = torch.bincount(self.labels.cpu())
        return int((counts // self.min_per_class).sum()) * self.min_per_class

    def __len__(self) -> int:
        return self._num_ordered() // self.global_batch

    def __iter__(self) -> Iterator[Batch]:
        perm_gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.min_per_class:
            order = class_grouped_order(self.labels.cpu(), self.min_per_class, perm_gen)
        else:
            order = torch.randperm(len(self.images), generator=perm_gen)
        gen = torch.Generator(device=self.device).manual_seed(
            (self.seed * 1_000_003 + self.epoch) * 1024 + self.rank)
        for b in range(len(self)):
            start = b * self.global_batch + self.rank * self.local_batch
            index = order[start:start + self.local_batch]
            x = self.images[index.to(self.images.device)].to(self.device, non_blocking=True)
            views = [self.augment(x, generator=gen) for _ in range(self.num_views)]
            views += [self.small_augment(x, generator=gen) for _ in range(self.num_small_crops)]
            yield Batch(views, index.to(self.device, non_blocking=True),
                        self.labels[index].to(self.device, non_blocking=True))


def class_grouped_order(labels: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation made of shuffled groups of ``m`` same-class sample indices; each class's
    last ``count % m`` samples (a random few each epoch) sit the epoch out."""
    groups = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        usable = len(idx) // m * m
        if usable:
            groups.append(idx[:usable].view(-1, m))
    if not groups:
        return torch.zeros(0, dtype=torch.long)
    groups = torch.cat(groups)
    return groups[torch.randperm(len(groups), generator=generator)].flatten()


class EvalLoader:
    """Sequential batches (images, labels) without augmentation; rank r takes every world-th batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 transform: EvalTransform, device: torch.device, rank: int = 0, world: int = 1):
        self.images, self.labels = _default_device_copy(images, device), labels
        self.batch_size, self.transform, self.device = batch_size, transform, device
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return len(range(self.rank, -(-len(self.images) // self.batch_size), self.world))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_batches = -(-len(self.images) // self.batch_size)
        for b in range(self.rank, n_batches, self.world):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            x = self.images[sl].to(self.device, non_blocking=True)
            yield self.transform(x), self.labels[sl].to(self.device, non_blocking=True)

    def sample_indices(self) -> torch.Tensor:
        """Dataset indices of the samples this rank yields, in order (to line gathered
        features up with dataset indices)."""
        n_batches = -(-len(self.images) // self.batch_size)
        parts = [torch.arange(b * self.batch_size, min((b + 1) * self.batch_size, len(self.images)))
                 for b in range(self.rank, n_batches, self.world)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _as_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def eval_batch_size(cfg: Config) -> int:
    return max(cfg.data.batch_size, 512)


VAL_PAIRS = 2048  # validation samples whose two views measure alignment / uniformity


def build_loaders(cfg: Config, rank: int, world: int, device: torch.device) -> Loaders:
    spec = get_dataset(cfg.data.dataset)
    if cfg.data.loader == "ffcv":
        from mpcl.data.ffcv_loader import build_ffcv_loaders

        return build_ffcv_loaders(cfg, spec, rank, world, device)
    train_x, train_y = load_arrays(cfg.data.dataset, cfg.data.path, "train")
    val_x, val_y = load_arrays(cfg.data.dataset, cfg.data.path, "val")
    if cfg.data.subset:
        train_x, train_y = train_x[:cfg.data.subset], train_y[:cfg.data.subset]
    if cfg.data.val_subset:
        val_x, val_y = val_x[:cfg.data.val_subset], val_y[:cfg.data.val_subset]
    tx, ty = _as_nchw(train_x), torch.from_numpy(train_y)
    vx, vy = _as_nchw(val_x), torch.from_numpy(val_y)
    train = TensorTrainLoader(tx, ty, cfg.data.batch_size, rank, world, cfg.train.seed,
                              ssl_augment(cfg, spec), device,
                              small_augment=small_crop_augment(cfg, spec) if cfg.data.num_small_crops else None,
                              num_small_crops=cfg.data.num_small_crops, min_per_class=cfg.data.min_per_class)
    evaluate = eval_transform(cfg, spec)
    bs = eval_batch_size(cfg)
    n_pairs = min(VAL_PAIRS, len(vx)) // world * world
    val_pairs = TensorTrainLoader(vx[:n_pairs], vy[:n_pairs], min(n_pairs, bs // world * world),
                                  rank, world, cfg.train.seed, ssl_augment(cfg, spec), device)
    return Loaders(train, EvalLoader(tx, ty, bs, evaluate, device, rank, world),
                   EvalLoader(vx, vy, bs, evaluate, device, rank, world), val_pairs, spec, len(tx))
