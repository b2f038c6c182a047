"""Small datasets written in the exact official on-disk formats, for the data tests."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch


def smooth_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8 colour gradients plus a little noise: JPEG-friendly, all different."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        a = rng.uniform(0, 255, 3)
        b = rng.uniform(-1, 1, (3, 2)) * 200 / max(h, w)
        img = a + b[:, 0] * y[..., None] + b[:, 1] * x[..., None]
        out[i] = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    return out


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte idx file, gzipped (the MNIST / Fashion-MNIST container)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def make_fashion_mnist(root: Path, n_train: int = 40, n_val: int = 15, seed: int = 0) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {}
    for split, prefix, n in (("train", "train", n_train), ("val", "t10k", n_val)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)
        data[split] = (x, y.astype(np.int64))
    return data


def make_cifar(root: Path, variant: str = "cifar10", n_per_batch: int = 6, seed: int = 0,
               protocol: int = 2) -> tuple[Path, dict, list[str]]:
    """``root/cifar-10-batches-py`` or ``root/cifar-100-python``, pickled like the originals:
    dicts with bytes keys, b'data' an N x 3072 uint8 array (row-major, channel planes)."""
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]}
        label_key, classes = b"labels", [f"class{i}" for i in range(10)]
        meta = ("batches.meta", {b"label_names": [c.encode() for c in classes],
                                 b"num_cases_per_batch": n_per_batch, b"num_vis": 3072})
    else:
        folder = root / "cifar-100-python"
        files = {"train": ["train"], "val": ["test"]}
        label_key, classes = b"fine_labels", [f"fine{i:02d}" for i in range(100)]
        meta = ("meta", {b"fine_label_names": [c.encode() for c in classes],
                         b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, names in files.items():
        images, labels = [], []
        for name in names:
            x = smooth_images(n_per_batch, 32, 32, seed=int(rng.integers(1 << 30)))
            y = rng.integers(0, len(classes), n_per_batch).tolist()
            batch = {b"batch_label": name.encode(), label_key: y,
                     b"data": x.transpose(0, 3, 1, 2).reshape(n_per_batch, 3072),
                     b"filenames": [f"img_{i}.png".encode() for i in range(n_per_batch)]}
            if variant == "cifar100":
                batch[b"coarse_labels"] = [v // 5 for v in y]
            with open(folder / name, "wb") as f:
                pickle.dump(batch, f, protocol=protocol)
            images.append(x)
            labels += y
        data[split] = (np.concatenate(images), np.array(labels, dtype=np.int64))
    with open(folder / meta[0], "wb") as f:
        pickle.dump(meta[1], f, protocol=protocol)
    return folder, data, classes


def tar_gz(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def make_stl10(root: Path, n_train: int = 8, n_val: int = 6, n_unlabeled: int = 0,
               class_names: list[str] | None = None, seed: int = 0) -> tuple[Path, dict]:
    """``root/stl10_binary`` with *_X.bin stored column-major (each image transposed,
    i.e. written as C x W x H) and *_y.bin labels 1..10."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, prefix, n in (("train", "train", n_train), ("val", "test", n_val),
                             ("unlabeled", "unlabeled", n_unlabeled)):
        if n == 0:
            continue
        x = smooth_images(n, 96, 96, seed=int(rng.integers(1 << 30)))
        x[:, :10, :30] = 255        # a white bar at the top left: not symmetric
        x.transpose(0, 3, 2, 1).tofile(folder / f"{prefix}_X.bin")   # HWC -> CWH
        if split != "unlabeled":
            y = rng.integers(1, 11, n, dtype=np.uint8)
            y.tofile(folder / f"{prefix}_y.bin")
            data[split] = (x, y.astype(np.int64) - 1)
        else:
            data[split] = (x, np.full(n, -1, dtype=np.int64))
    if class_names is not None:
        (folder / "class_names.txt").write_text("\n".join(class_names) + "\n")
    return folder, data


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    """Save an (H, W, C) or (H, W) uint8 array with PIL (converted to ``mode`` if given),
    format from the suffix."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path, **kwargs)
    return path


def check_output(out: Path, manifest: dict, expected: dict, atol: float = 0.0) -> dict:
    """The folder holds exactly the manifest's files; every split reads back as ``expected``
    (split -> (images, labels)); checksums, sizes and train mean/std are right."""
    files = manifest["files"]
    # no temporary files; the writer's lock file stays (a later writer locks the same file)
    assert sorted(os.listdir(out)) == sorted([*files.values(), "manifest.json", ".lock"])
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert set(files) == set(expected) and manifest["sizes"] == {
        s: len(y) for s, (_, y) in expected.items()}
    from mpcl.data.betons import BetonReader

    readers = {}
    for split, (images, labels) in expected.items():
        path = out / files[split]
        assert manifest["sha256"][path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert manifest["bytes"][path.name] == path.stat().st_size
        reader = readers[split] = BetonReader(path)
        assert len(reader) == len(labels)
        np.testing.assert_array_equal(reader.indices, np.arange(len(labels)))
        np.testing.assert_array_equal(reader.labels, labels)
        for i, want in enumerate(images):
            got = reader.image(i)
            assert got.shape == want.shape, (split, i)
            if atol == 0:
                np.testing.assert_array_equal(got, want, err_msg=f"{split}[{i}]")
            else:
                assert np.abs(got.astype(int) - want).mean() <= atol, (split, i)
    return readers


def check_stats(manifest: dict, train_images) -> None:
    pixels = np.concatenate([np.asarray(im, np.float64).reshape(-1, 3) for im in train_images])
    pixels /= 255
    np.testing.assert_allclose(manifest["mean"], pixels.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(manifest["std"], pixels.std(axis=0), atol=1e-9)


def awkward_images(n: int = 12, h: int = 20, w: int = 24, seed: int = 0) -> torch.Tensor:
    """Float images in [0, 1] with the awkward cases: gray pixels, ties, saturated pixels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    x[0, :, :4] = 0.5  # gray (max == min)
    x[1, 0] = x[1, 1]  # r == g ties
    x[2, 1] = x[2, 2]  # g == b ties
    x[3, :, :, :3] = 1.0  # white
    x[4, :, :, :3] = 0.0  # black
    x[5] = (x[5] * 255).round() / 255  # uint8-like values
    return x



def fmnist_image_folder(raw: str | os.PathLike, root: Path, per_class: dict[str, int], size: int = 48,
                        classes: int = 10, labelled: bool = True, offset: int = 0) -> Path:
    """An image folder as a user keeps one: Fashion-MNIST's first images of each of ``classes``
    classes as ``size`` px RGB PNG files, ``root/<split>/<class name>/<n>.png`` (or
    ``root/<split>/<n>.png`` when not ``labelled``), ``per_class[split]`` images per class;
    ``offset`` skips that many images of each class first (a second, disjoint folder)."""
    from PIL import Image

    from mpcl.data.sources import FASHION_MNIST_CLASSES, read_fashion_mnist

    for split, n in per_class.items():
        images, labels = read_fashion_mnist(Path(raw), "train" if split == "train" else "val")
        for y in range(classes):
            name = FASHION_MNIST_CLASSES[y].replace("/", "-").replace(" ", "_")
            folder = root / split / name if labelled else root / split
            folder.mkdir(parents=True, exist_ok=True)
            for k, i in enumerate(np.flatnonzero(labels == y)[offset:offset + n]):
                image = Image.fromarray(images[i]).resize((size, size), Image.BILINEAR).convert("RGB")
                image.save(folder / f"{name if not labelled else ''}{k}.png")
    return root
