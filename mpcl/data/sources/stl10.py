"""STL-10: the official binary layout (stl10_binary/), memory-mapped."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mpcl.data.sources.errors import SourceError

STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer",
                 "dog", "horse", "monkey", "ship", "truck")


STL10_FILES = {"train": ("train_X.bin", "train_y.bin"),
               "val": ("test_X.bin", "test_y.bin"),
               "unlabeled": ("unlabeled_X.bin", None)}
_STL10_EXPECTED = ("expected the official binary version: a stl10_binary/ folder with "
                   "train_X.bin, train_y.bin, test_X.bin, test_y.bin [, unlabeled_X.bin, "
                   "class_names.txt], or a folder holding it")


def stl10_root(src: str | os.PathLike) -> Path:
    """The ``stl10_binary`` folder: ``src`` itself or ``src/stl10_binary``."""
    src = Path(src)
    if not src.exists():
        raise SourceError(f"{src}: no such file or directory ({_STL10_EXPECTED})")
    for root in (src, src / "stl10_binary"):
        if (root / "train_X.bin").is_file():
            return root
    raise SourceError(f"{src}: no train_X.bin ({_STL10_EXPECTED})")


def read_stl10(src: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """STL-10 ``split`` = ``"train"`` (5,000), ``"val"`` (the 8,000 test images) or
    ``"unlabeled"`` (100,000, labels -1).

    Images are memory-mapped, not loaded: (N, 96, 96, 3) RGB views of the column-major
    files (each stored image is the transpose, hence ``transpose(0, 3, 2, 1)``). Labels
    1..10 on disk become 0..9.
    """
    if split not in STL10_FILES:
        raise ValueError(f"split={split!r}: expected one of {sorted(STL10_FILES)}")
    root = stl10_root(src)
    x_name, y_name = STL10_FILES[split]
    x_path = root / x_name
    if not x_path.is_file():
        raise SourceError(f"{root}: no {x_name} ({_STL10_EXPECTED})")
    per_image = 3 * 96 * 96
    size = x_path.stat().st_size
    if size == 0 or size % per_image:
        raise SourceError(f"{x_path}: {size} bytes is not a whole number of "
                          f"{per_image}-byte 3x96x96 images (truncated?)")
    n = size // per_image
    raw = np.memmap(x_path, dtype=np.uint8, mode="r", shape=(n, 3, 96, 96))
    images = raw.transpose(0, 3, 2, 1)
    if y_name is None:
        return images, np.full(n, -1, dtype=np.int64)
    y_path = root / y_name
    if not y_path.is_file():
        raise SourceError(f"{root}: no {y_name} ({_STL10_EXPECTED})")
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    if len(labels) != n:
        raise SourceError(f"{y_path}: {len(labels)} labels for {n} images in {x_name}")
    if n and (labels.min() < 1 or labels.max() > 10):
        raise SourceError(f"{y_path}: labels outside 1..10")
    return images, labels - 1


def stl10_classes(src: str | os.PathLike) -> list[str]:
    """Names from ``class_names.txt`` when present, else the standard ten."""
    path = stl10_root(src) / "class_names.txt"
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) != 10:
            raise SourceError(f"{path}: {len(names)} class names, expected 10")
        return names
    return list(STL10_CLASSES)
