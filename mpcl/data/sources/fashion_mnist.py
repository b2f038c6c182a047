"""Fashion-MNIST: the four idx files (plain or .gz), and its 28x28 grey images as the 32x32
RGB images mpcl trains on."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from mpcl.data.sources.errors import SourceError

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _read_maybe_gz(path: Path) -> tuple[bytes, Path]:
    """The bytes of ``path`` or, when only that exists, of ``path.gz`` (decompressed), and the
    file read. A truncated or corrupt gzip file is a ``SourceError`` naming it."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            if candidate.suffix != ".gz":
                return candidate.read_bytes(), candidate
            try:
                with gzip.open(candidate, "rb") as f:
                    return f.read(), candidate
            except (EOFError, OSError, zlib.error) as e:
                raise SourceError(f"{candidate}: truncated or corrupt gzip file ({e}); "
                                  "download it again") from None
    raise SourceError(f"{path}(.gz): file not found")


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (plain or .gz): the MNIST / Fashion-MNIST container format."""
    data, path = _read_maybe_gz(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SourceError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise SourceError(f"{path}: truncated idx file ({len(data) - offset} of {expected} bytes)")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def fashion_mnist_present(root: str | os.PathLike) -> bool:
    root = Path(root)
    return all(
        (root / n).is_file() or (root / (n + ".gz")).is_file()
        for pair in FASHION_MNIST_FILES.values() for n in pair
    )


def read_fashion_mnist(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from the four idx files (``train-images-idx3-ubyte[.gz]`` ...) in ``root``.

    ``split`` is ``"train"`` (60,000) or ``"val"`` (the 10,000 test images).
    Returns grayscale images (N, 28, 28) and labels (N,).
    """
    root = Path(root)
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split={split!r}: expected one of {sorted(FASHION_MNIST_FILES)}")
    if not root.is_dir():
        raise SourceError(f"{root}: no such directory (expected the Fashion-MNIST idx files "
                          "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...)")
    image_file, label_file = FASHION_MNIST_FILES[split]
    images = read_idx(root / image_file)
    labels = read_idx(root / label_file).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise SourceError(f"{root}: {image_file} and {label_file} do not match "
                          f"(images {images.shape}, labels {labels.shape})")
    return images, labels


def gray_to_rgb_padded(images: np.ndarray, size: int = 32) -> np.ndarray:
    """(N, h, w) uint8 grayscale -> (N, size, size, 3): zero-pad evenly, replicate the channel.

    Fashion-MNIST's 28x28 become 32x32 with 2 black pixels on each side; every source pixel
    is kept exactly.
    """
    n, h, w = images.shape
    top, left = (size - h) // 2, (size - w) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    out = np.zeros((n, size, size, 3), dtype=np.uint8)
    out[:, top:top + h, left:left + w, :] = images[..., None]
    return out
