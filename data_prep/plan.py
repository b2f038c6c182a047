"""What a planner returns: the splits to write (each a dataset of ``(image, label, index)``
samples), the class names, and the inputs skipped or converted on the way; and the pixel
statistics the manifest records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpcl.data.sources import load_rgb

class ArrayDataset:
    """Samples from an (N, H, W, 3) uint8 array (or memmap view) and N labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), int(i)


class FileDataset:
    """Samples decoded from image files already checked by a first pass."""

    def __init__(self, paths: list[Path], labels: list[int]):
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image, _ = load_rgb(self.paths[i])
        return np.asarray(image), int(self.labels[i]), int(i)


@dataclass
class Split:
    name: str                       # train | val | unlabeled
    dataset: object                 # len() and [i] -> (image, label, index)
    hist: np.ndarray | None = None  # (3, 256) pixel counts of what is written (train only)
    max_sample_bytes: int = 0       # largest raw image, for ffcv's page size
    sides: dict | None = None       # stored sizes: shortest and median shorter side, longest side

    @property
    def labelled(self) -> bool:
        """Every sample has a class (unlabelled samples carry -1)."""
        return len(self.dataset) > 0 and int(np.min(self.dataset.labels)) >= 0


@dataclass
class Plan:
    splits: list[Split]
    classes: list[str]
    image_size: int | None          # side of every image, None when sizes vary
    write_mode: str = "raw"
    skipped: list[dict] = field(default_factory=list)      # inputs not stored, with reasons
    converted: list[dict] = field(default_factory=list)    # stored after a mode conversion
    rescaled: list[dict] = field(default_factory=list)     # 16-bit sources stored as 8-bit
    empty_classes: list[dict] = field(default_factory=list)  # class folders with no image


def pixel_histogram(images: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(3, 256) int64 counts of each value in each channel of (N, H, W, 3) uint8 images."""
    hist = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk])
        for c in range(3):
            hist[c] += np.bincount(block[..., c].ravel(), minlength=256)
    return hist


def mean_std(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std in [0, 1] from a pixel histogram."""
    values = np.arange(256, dtype=np.int64)
    n = hist.sum(axis=1).astype(np.float64)
    mean = (hist @ values) / (255.0 * n)             # exact integer sums, then one division
    var = (hist @ values**2) / (255.0**2 * n) - mean**2
    return mean.tolist(), np.sqrt(np.maximum(var, 0.0)).tolist()


def sides_of(shapes: np.ndarray) -> dict:
    """What a training crop can be cut from: the stored images' shortest and median shorter
    side and their longest side, from (N, 2) heights and widths."""
    short = shapes.min(axis=1)
    return {"min_short": int(short.min()), "median_short": int(np.median(short)), "max_long": int(shapes.max())}


def array_split(name: str, images: np.ndarray, labels: np.ndarray) -> Split:
    hist = pixel_histogram(images) if name == "train" else None
    return Split(name, ArrayDataset(images, labels), hist, int(np.prod(images.shape[1:])),
                 sides_of(np.array([images.shape[1:3]])))
