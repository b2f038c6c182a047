"""FFCV loaders: .beton files -> two-view training batches and evaluation batches on the device.

The whole training pipeline, per view (both views decode the one stored ``image`` field)::

    RandomResizedCropRGBImageDecoder((S, S), scale) -> RandomHorizontalFlip -> ToTensor
      -> ToDevice -> ToTorchImage            (inside FFCV: numba threads, uint8)
      -> SSLAugment(crop=False)               (on the device, whole batch: colour jitter,
                                               grayscale, blur, solarize, normalize)

``label`` and ``index`` (IntFields) come with every batch. One worker reads in QUASI_RANDOM
order (``os_cache`` when the file fits in memory); several workers read disjoint shards of a
seeded permutation (ffcv's ``distributed=True`` semantics, the rank and world size passed
explicitly). Evaluation loaders read sequentially, each sample exactly once over all ranks.

Reproducibility: the sample order of an epoch and the on-device colour augmentation are
functions of (``train.seed``, epoch, rank), so a resumed epoch replays them; the crop and
flip are drawn by ffcv's numba threads (per-thread generators ffcv does not seed) and are not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mpcl.config import Config, ConfigError
from mpcl.data.batch import Batch, Loaders
from mpcl.data.betons import check_beton, data_dir, prep_command
from mpcl.data.datasets import DatasetSpec
from mpcl.data.process import available_cpus
from mpcl.data.recipe import eval_batch_size, eval_transform, ssl_augment, val_pair_count
from mpcl.data.tensor_loader import augment_generator, val_pairs_loader
from mpcl.data.sources import SourceError

EVAL_CROP_RATIO = 224 / 256  # centre crop of images larger than the training size


# -- resources --------------------------------------------------------------------------------

def loader_workers(requested: int) -> int:
    """FFCV decoding threads: ``requested`` (0 = all) capped by the cores this process may use
    and by numba's thread pool (ffcv raises above either)."""
    import numba

    cap = min(available_cpus(), int(numba.config.NUMBA_NUM_THREADS))
    return max(1, min(requested or cap, cap))


def fits_in_memory(path: Path) -> bool:
    """Whether the page cache can comfortably hold the file (half the available RAM)."""
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:  # pragma: no cover - psutil comes with ray
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return path.stat().st_size <= available / 2


# -- traversal order --------------------------------------------------------------------------

def _traversal_base():
    from ffcv.traversal_order.base import TraversalOrder

    return TraversalOrder


class _ShardedRandomMixin:
    """ffcv's ``Random`` order with ``distributed=True`` — torch's ``DistributedSampler``
    (shuffle, seed + epoch) — with the rank and world size given instead of read from the
    default process group, and ``drop_last=True`` so no sample is padded in twice.

    ffcv 1.0.2 accepts a custom order as an *instance* it calls with the loader, hence
    ``ShardedRandom(rank=, world=)`` acts as the factory and ``__call__`` binds it.
    """

    def __init__(self, loader=None, *, rank: int, world: int):
        self.rank, self.world = rank, world
        if loader is not None:
            super().__init__(loader)  # type: ignore[call-arg]

    def __call__(self, loader):
        return type(self)(loader, rank=self.rank, world=self.world)

    def sample_order(self, epoch: int):
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(self.indices, num_replicas=self.world, rank=self.rank,
                                     shuffle=True, seed=self.seed, drop_last=True)
        sampler.set_epoch(epoch)
        return self.indices[np.fromiter(iter(sampler), dtype=np.int64)]


def sharded_random(rank: int, world: int):
    cls = type("ShardedRandom", (_ShardedRandomMixin, _traversal_base()), {})
    return cls(rank=rank, world=world)


def replayable_quasi_random():
    """ffcv's QUASI_RANDOM order made a function of (seed, epoch): ffcv 1.0.2 shuffles its
    page table in place, so its epoch order depends on the epochs drawn before it and a
    resumed run would not replay; here every epoch shuffles a fresh copy."""
    from ffcv.traversal_order import QuasiRandom
    from ffcv.traversal_order.quasi_random import generate_order_inner

    class ReplayableQuasiRandom(QuasiRandom):
        def __init__(self, loader=None):
            if loader is not None:
                super().__init__(loader)

        def __call__(self, loader):
            return ReplayableQuasiRandom(loader)

        def sample_order(self, epoch: int):
            result = np.zeros(len(self.indices), dtype=np.int64)
            generate_order_inner(self.seed * 912300 + epoch, self.page_to_samples_array.copy(),
                                 self.page_sizes, result, 2 * self.loader.batch_size)
            return result

    return ReplayableQuasiRandom()


def rank_share(n: int, rank: int, world: int) -> np.ndarray:
    """Sample ids 0..n-1 of ``rank`` for evaluation: contiguous, disjoint, covering all of them
    (ffcv's distributed SEQUENTIAL order pads with repeats; a kNN bank must not)."""
    bounds = np.linspace(0, n, world + 1).round().astype(np.int64)
    return np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)


# -- pipelines --------------------------------------------------------------------------------

def _image_tail(device: torch.device) -> list:
    from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

    tail = [ToTensor()]
    if device.type != "cpu":
        tail.append(ToDevice(device, non_blocking=True))
    return tail + [ToTorchImage()]


def _int_pipeline(device: torch.device) -> list:
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor

    ops = [IntDecoder(), ToTensor(), Squeeze()]
    if device.type != "cpu":
        ops.append(ToDevice(device, non_blocking=True))
    return ops


def _fixed_size(reader, size: int) -> bool:
    meta = reader.metadata["f0"]
    return bool((meta["height"] == size).all() and (meta["width"] == size).all())


def _eval_decoder(reader, size: int):
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, SimpleRGBImageDecoder

    if _fixed_size(reader, size):
        return SimpleRGBImageDecoder()
    return CenterCropRGBImageDecoder((size, size), ratio=EVAL_CROP_RATIO)


# -- loaders ----------------------------------------------------------------------------------

class FFCVTrainLoader:
    """Two augmented views, index and label per batch, from one .beton (see the module doc)."""

    def __init__(self, path: Path, cfg: Config, spec: DatasetSpec, rank: int, world: int,
                 device: torch.device, indices: np.ndarray | None = None,
                 num_workers: int | None = None, num_views: int = 2):
        from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import RandomHorizontalFlip

        global_batch = cfg.data.batch_size
        n = len(indices) if indices is not None else None
        self.local_batch = global_batch // world
        if self.local_batch < 1:
            raise ConfigError(f"data.batch_size={global_batch}: smaller than the number of workers ({world})")
        self.rank, self.world, self.seed = rank, world, cfg.train.seed
        self.device, self.num_views, self.epoch = device, num_views, 0
        self.augment = ssl_augment(cfg, spec, crop=False)
        S = spec.image_size

        def view():
            return (RandomResizedCropRGBImageDecoder((S, S), scale=(cfg.data.crop_scale_min, 1.0)),
                    [RandomHorizontalFlip(), *_image_tail(device)])

        decoder, transforms = view()
        pipelines: dict = {"image": [decoder, *transforms], "label": _int_pipeline(device),
                           "index": _int_pipeline(device)}
        for v in range(1, num_views):
            decoder, transforms = view()
            pipelines[f"image{v + 1}"] = PipelineSpec("image", decoder=decoder, transforms=transforms)
        if world > 1:
            order, os_cache, distributed = sharded_random(rank, world), fits_in_memory(path), True
        else:
            os_cache = fits_in_memory(path)
            order, distributed = replayable_quasi_random(), False
        self.loader = Loader(str(path), batch_size=self.local_batch,
                             num_workers=loader_workers(cfg.data.num_workers if num_workers is None else num_workers),
                             os_cache=os_cache, order=order, distributed=distributed,
                             seed=cfg.train.seed, indices=indices, pipelines=pipelines,
                             drop_last=True)
        total = n if n is not None else self.loader.reader.num_samples
        if total < global_batch:
            raise ConfigError(f"data.batch_size={global_batch}: larger than the training set ({total} samples)")
        self.outputs = list(self.loader.pipeline_specs)  # ffcv's output order: fields, then extras
        self.views = ["image", *(f"image{v + 1}" for v in range(1, num_views))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def generator(self) -> torch.Generator:
        return augment_generator(self.seed, self.epoch, self.rank, self.device)

    def __iter__(self) -> Iterator[Batch]:
        self.loader.next_epoch = self.epoch  # ffcv seeds the epoch's order with next_epoch
        gen = self.generator()
        for out in self.loader:
            fields = dict(zip(self.outputs, out, strict=True))
            views = [self.augment(fields[name], generator=gen) for name in self.views]
            # ffcv reuses its output buffers: ``long()`` (int64 already) would alias, clone
            yield Batch(views, fields["index"].clone(), fields["label"].clone())


class FFCVEvalLoader:
    """(images, labels) of ``indices`` in order, without augmentation (EvalTransform)."""

    def __init__(self, path: Path, reader, cfg: Config, spec: DatasetSpec, indices: np.ndarray,
                 device: torch.device, num_workers: int | None = None):
        from ffcv.loader import Loader, OrderOption

        self.transform = eval_transform(cfg, spec)
        self.batch_size = eval_batch_size(cfg)
        self.n = len(indices)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.loader = None
        if self.n:
            pipelines = {"image": [_eval_decoder(reader, spec.image_size), *_image_tail(device)],
                         "label": _int_pipeline(device), "index": None}
            workers = cfg.data.num_workers if num_workers is None else num_workers
            self.loader = Loader(str(path), batch_size=self.batch_size, num_workers=loader_workers(workers),
                                 os_cache=True, order=OrderOption.SEQUENTIAL, indices=indices,
                                 pipelines=pipelines, drop_last=False)

    def __len__(self) -> int:
        return len(self.loader) if self.loader is not None else 0

    def sample_indices(self) -> torch.Tensor:
        """Dataset indices of the samples this rank yields, in order."""
        return torch.from_numpy(self.indices.copy())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.loader is None:
            return
        for images, labels in self.loader:
            yield self.transform(images), labels.clone()


def decode_all(path: Path, reader, spec: DatasetSpec, indices: np.ndarray,
               num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, S, S) images (centre square for larger ones) and int64 labels, in memory."""
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor, ToTorchImage

    S = spec.image_size
    decoder = SimpleRGBImageDecoder() if _fixed_size(reader, S) else CenterCropRGBImageDecoder((S, S), ratio=1.0)
    loader = Loader(str(path), batch_size=512, num_workers=num_workers, os_cache=True,
                    order=OrderOption.SEQUENTIAL, indices=indices, drop_last=False,
                    pipelines={"image": [decoder, ToTensor(), ToTorchImage(channels_last=False)],
                               "label": _int_pipeline(torch.device("cpu")), "index": None})
    xs, ys = [], []
    for x, y in loader:
        xs.append(x.clone())
        ys.append(y.clone())
    return torch.cat(xs), torch.cat(ys)


def build_ffcv_loaders(cfg: Config, spec: DatasetSpec, rank: int, world: int,
                       device: torch.device) -> Loaders:
    root = data_dir(cfg, spec)
    train_path, val_path = root / "train.beton", root / "val.beton"
    train_reader = check_beton(train_path, spec)
    val_reader = check_beton(val_path, spec)
    fit_path, fit_reader = train_path, train_reader   # what the SSL loss trains on
    if cfg.data.train_split == "unlabeled":
        fit_path = root / "unlabeled.beton"
        if not fit_path.is_file():
            raise SourceError(f"{fit_path}: not found; data.train_split=unlabeled reads the split that "
                              f"`{prep_command(spec, root)} --unlabeled` writes")
        fit_reader = check_beton(fit_path, spec)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pg = (torch.distributed.get_rank(), torch.distributed.get_world_size())
        if pg != (rank, world):
            raise ValueError(f"rank/world {(rank, world)} differ from the process group's {pg}")

    n_fit, n_train = int(fit_reader.num_samples), int(train_reader.num_samples)
    if cfg.data.subset:
        n_fit, n_train = min(n_fit, cfg.data.subset), min(n_train, cfg.data.subset)
    n_val = int(val_reader.num_samples)
    if cfg.data.val_subset:
        n_val = min(n_val, cfg.data.val_subset)
    fit_ids = np.arange(n_fit, dtype=np.int64) if n_fit < fit_reader.num_samples else None
    train = FFCVTrainLoader(fit_path, cfg, spec, rank, world, device, indices=fit_ids)

    workers = loader_workers(cfg.data.num_workers)
    train_eval = FFCVEvalLoader(train_path, train_reader, cfg, spec, rank_share(n_train, rank, world), device)
    val = FFCVEvalLoader(val_path, val_reader, cfg, spec, rank_share(n_val, rank, world), device)

    # alignment / uniformity: a fixed validation subset, two views replayed identically each
    # evaluation (decoded once; crops drawn by torch with a seeded generator, not by ffcv)
    n_pairs = val_pair_count(n_val, world)
    vx, vy = decode_all(val_path, val_reader, spec, np.arange(n_pairs, dtype=np.int64), workers)
    val_pairs = val_pairs_loader(cfg, spec, vx, vy, rank, world, device)
    return Loaders(train, train_eval, val, val_pairs, spec, n_fit)
