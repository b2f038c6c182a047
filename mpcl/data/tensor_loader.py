"""The torch loaders: uint8 images held in memory (on the GPU when small), batches sliced by
index and augmented as whole batches on the training device; and the seeding every training
loader shares, so an epoch replays exactly after a resume."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mpcl.config import Config, ConfigError
from mpcl.data.augment import EvalTransform, SSLAugment
from mpcl.data.batch import Batch
from mpcl.data.datasets import DatasetSpec
from mpcl.data.recipe import eval_batch_size, ssl_augment


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's sample order: a function of (``train.seed``, epoch) only."""
    return seed * 1_000_003 + epoch


def augment_generator(seed: int, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of a rank's on-device augmentation in an epoch, on ``device``."""
    return torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch) * 1024 + rank)


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
    present in a batch has at least that many samples there (MCL's supervised form); config
    validation checks that ``min_per_class`` divides the per-worker batch.
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
        perm_gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.min_per_class:
            order = class_grouped_order(self.labels.cpu(), self.min_per_class, perm_gen)
        else:
            order = torch.randperm(len(self.images), generator=perm_gen)
        gen = augment_generator(self.seed, self.epoch, self.rank, self.device)
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


def val_pairs_loader(cfg: Config, spec: DatasetSpec, images: torch.Tensor, labels: torch.Tensor,
                     rank: int, world: int, device: torch.device) -> TensorTrainLoader:
    """Two augmented views of the fixed validation subset ``images`` (``recipe.val_pair_count``
    samples), replayed identically each evaluation."""
    n = len(images)
    return TensorTrainLoader(images, labels, min(n, eval_batch_size(cfg) // world * world), rank, world,
                             cfg.train.seed, ssl_augment(cfg, spec), device)
