"""Loaders: the one place that decides how batches reach the training device.

``build_loaders(cfg, rank, world, device)`` returns the training loader (two augmented
views, index, label) and the two evaluation loaders (train split without augmentation for
the kNN bank, validation split). ``data.loader=ffcv`` reads .beton files
(``mpcl.data.ffcv_loader``); ``data.loader=torch`` (the fallback for users without FFCV)
keeps the uint8 images of an array dataset in memory (``mpcl.data.tensor_loader``); a data_prep
folder's images are read from its .beton files and stored at the crop size (shorter side
resized to it, centre square kept), so the folder must fit in memory at that size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mpcl.config import Config
from mpcl.data import sources
from mpcl.data.batch import Loaders
from mpcl.data.datasets import DatasetSpec, dataset_spec
from mpcl.data.recipe import (eval_batch_size, eval_transform, small_crop_augment, ssl_augment,
                              val_pair_count)
from mpcl.data.tensor_loader import EvalLoader, TensorTrainLoader, val_pairs_loader


def _download_fashion_mnist(root: Path) -> Path:
    """torchvision's downloader into ``root`` (used only when the idx files are absent)."""
    import torchvision

    torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
    torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    return root / "FashionMNIST" / "raw"


def load_arrays(spec: DatasetSpec, path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, 3) and int64 labels of one split of an array dataset or folder."""
    dataset = spec.name
    root = Path(path or spec.default_path("torch"))
    if spec.from_manifest:
        return _folder_arrays(root / f"{split}.beton", spec.image_size)
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


def _folder_arrays(path: Path, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a data_prep .beton as a ``side`` x ``side`` square (shorter side resized
    with area averaging, centre kept), and the labels."""
    import cv2

    from mpcl.data.betons import BetonReader

    if not path.is_file():
        raise sources.SourceError(f"{path}: not found (a folder `python -m data_prep` wrote holds train.beton "
                                  "and val.beton)")
    reader = BetonReader(path)
    images = np.empty((len(reader), side, side, 3), dtype=np.uint8)
    for i in range(len(reader)):
        image = reader.image(i)
        h, w = image.shape[:2]
        scale = side / min(h, w)
        nh, nw = max(side, round(h * scale)), max(side, round(w * scale))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        top, left = (nh - side) // 2, (nw - side) // 2
        images[i] = image[top:top + side, left:left + side]
    return images, np.array(reader.labels)   # a writable copy (torch wraps it)


def _as_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def build_loaders(cfg: Config, rank: int, world: int, device: torch.device) -> Loaders:
    spec = dataset_spec(cfg.data)
    if cfg.data.loader == "ffcv":
        from mpcl.data.ffcv_loader import build_ffcv_loaders

        return build_ffcv_loaders(cfg, spec, rank, world, device)
    train_x, train_y = load_arrays(spec, cfg.data.path, "train")
    val_x, val_y = load_arrays(spec, cfg.data.path, "val")
    fit_x, fit_y = (train_x, train_y) if cfg.data.train_split == "train" else \
        load_arrays(spec, cfg.data.path, cfg.data.train_split)   # what the SSL loss trains on
    if cfg.data.subset:
        fit_x, fit_y = fit_x[:cfg.data.subset], fit_y[:cfg.data.subset]
        train_x, train_y = train_x[:cfg.data.subset], train_y[:cfg.data.subset]
    if cfg.data.val_subset:
        val_x, val_y = val_x[:cfg.data.val_subset], val_y[:cfg.data.val_subset]
    tx, ty = _as_nchw(train_x), torch.from_numpy(train_y)
    vx, vy = _as_nchw(val_x), torch.from_numpy(val_y)
    fx, fy = (tx, ty) if cfg.data.train_split == "train" else (_as_nchw(fit_x), torch.from_numpy(fit_y))
    train = TensorTrainLoader(fx, fy, cfg.data.batch_size, rank, world, cfg.train.seed,
                              ssl_augment(cfg, spec), device,
                              small_augment=small_crop_augment(cfg, spec) if cfg.data.num_small_crops else None,
                              num_small_crops=cfg.data.num_small_crops, min_per_class=cfg.data.min_per_class)
    evaluate = eval_transform(cfg, spec)
    bs = eval_batch_size(cfg)
    n_pairs = val_pair_count(len(vx), world)
    val_pairs = val_pairs_loader(cfg, spec, vx[:n_pairs], vy[:n_pairs], rank, world, device)
    return Loaders(train, EvalLoader(tx, ty, bs, evaluate, device, rank, world),
                   EvalLoader(vx, vy, bs, evaluate, device, rank, world), val_pairs, spec, len(fx))
