"""Dataset specs: what the rest of mpcl needs to know about the data a run trains on.

``dataset_spec(cfg.data)`` is the one entry point. ``data.dataset`` names one of the
``DATASETS`` (the benchmarks, with their published statistics) or is ``folder``: any folder
``python -m data_prep`` wrote, at ``data.path``, whose ``manifest.json`` is the spec (classes,
stored sizes, mean/std, split sizes, labelled or not). ``data.image_size`` sets the training
crop; 0 takes the dataset's default. Mean/std are per-channel statistics of the training split
in [0, 1] pixel units (Fashion-MNIST's are those of the 32x32 zero-padded images mpcl feeds,
replicated over the three channels).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mpcl.data.betons import FIELDS
from mpcl.data.sources import FASHION_MNIST_CLASSES, STL10_CLASSES, SourceError

if TYPE_CHECKING:
    from mpcl.config.schema import DataConfig

FOLDER = "folder"            # data.dataset of a data_prep folder (data.path)
MANIFEST = "manifest.json"
DEFAULT_MAX_CROP = 224       # a folder's default crop: its median shorter side, at most this


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int         # 0 for unlabelled data
    image_size: int          # side of the (square) training crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    raw_path: str            # default location of the raw files (official layout)
    beton_dir: str           # default location of train.beton / val.beton
    train_size: int
    val_size: int
    classes: tuple[str, ...] = ()   # names in label order (empty where unknown: CIFAR-100 and ImageNet-100
                                    # read theirs from the raw files)
    labelled: bool = True    # both splits carry classes (kNN and the probes need them)
    max_side: int | None = None   # the longest stored image side, the largest crop (None: unknown)
    from_manifest: bool = False   # a data_prep folder: both loaders read its .beton files
    splits: tuple[str, ...] = ("train", "val")   # the splits it has (STL-10: also "unlabeled")

    def default_path(self, loader: str) -> str:
        """Where ``data.path`` points when it is empty: the .beton folder or the raw files."""
        return self.beton_dir if loader == "ffcv" or self.from_manifest else self.raw_path


# CIFAR-10's batches.meta names, in label order
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("fashion_mnist", 10, 32, (0.2190,) * 3, (0.3318,) * 3,
                    "/usr/share/datasets/fashion-mnist", "data/fmnist", 60_000, 10_000,
                    tuple(FASHION_MNIST_CLASSES), max_side=32),
        DatasetSpec("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    "data/raw/cifar-10-batches-py", "data/cifar10", 50_000, 10_000, CIFAR10_CLASSES, max_side=32),
        DatasetSpec("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                    "data/raw/cifar-100-python", "data/cifar100", 50_000, 10_000, max_side=32),
        DatasetSpec("stl10", 10, 96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713),
                    "data/raw/stl10_binary", "data/stl10", 5_000, 8_000, tuple(STL10_CLASSES), max_side=96,
                    splits=("train", "val", "unlabeled")),
        DatasetSpec("imagenet100", 100, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                    "data/raw/imagenet100", "data/imagenet100", 126_689, 5_000),
    ]
}
DATASET_NAMES = (*DATASETS, FOLDER)   # what data.dataset accepts


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def dataset_spec(data: DataConfig) -> DatasetSpec:
    """The spec of ``data.dataset`` (a folder's from its manifest) with ``data.image_size``'s
    crop; a ``SourceError`` naming the key or file when it cannot be."""
    spec = folder_spec(data.path) if data.dataset == FOLDER else get_dataset(data.dataset)
    if not data.image_size:
        return spec
    if spec.max_side is not None and data.image_size > spec.max_side:
        raise SourceError(f"data.image_size={data.image_size}: the images of {spec.name} are stored at most "
                          f"{spec.max_side} px on their longer side, so the crop would only be upsampled; "
                          f"use at most {spec.max_side}")
    return replace(spec, image_size=data.image_size)


def read_manifest(folder: str | Path) -> dict:
    """``folder/manifest.json`` as data_prep wrote it; a one-line ``SourceError`` otherwise."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise SourceError(f"data.path={folder}: no such directory (a folder `python -m data_prep` wrote)")
    if not path.is_file():
        raise SourceError(f"{path}: not found; data.path must be a folder `python -m data_prep` wrote "
                          f"(e.g. `python -m data_prep imagefolder --src MY_IMAGES --out {folder}`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    needed = ("classes", "sizes", "mean", "std", "files", "fields")
    if not isinstance(manifest, dict) or any(k not in manifest for k in needed) or manifest["fields"] != FIELDS:
        raise SourceError(f"{path}: not a data_prep manifest (it needs {', '.join(needed)} and the fields "
                          f"{', '.join(FIELDS)}); rewrite the folder with `python -m data_prep`")
    return manifest


def folder_spec(folder: str) -> DatasetSpec:
    """The spec of a data_prep folder, read from its manifest."""
    if not folder:
        raise SourceError("data.path: empty; data.dataset=folder trains on a folder `python -m data_prep` wrote")
    m = read_manifest(folder)
    sides = (m.get("sides") or {}).get("train") or {}
    fixed = m.get("image_size")
    max_side = fixed or sides.get("max_long") or m.get("max_resolution")
    if fixed:
        crop = fixed
    elif sides:
        crop = max(8, min(DEFAULT_MAX_CROP, sides["median_short"]) // 8 * 8)
    else:
        crop = min(DEFAULT_MAX_CROP, max_side or DEFAULT_MAX_CROP)
    labelled = m.get("labelled") or {}
    return DatasetSpec(
        name=f"{FOLDER} {folder}", num_classes=len(m["classes"]), image_size=int(crop),
        mean=tuple(m["mean"]), std=tuple(m["std"]), raw_path=str(m.get("source", "")), beton_dir=str(folder),
        train_size=int(m["sizes"]["train"]), val_size=int(m["sizes"].get("val", 0)), classes=tuple(m["classes"]),
        labelled=bool(m["classes"]) and all(labelled.get(s, True) for s in ("train", "val")),
        max_side=int(max_side) if max_side else None, from_manifest=True, splits=tuple(m["files"]))
