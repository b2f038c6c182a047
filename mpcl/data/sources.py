"""Readers for datasets in their official on-disk formats.

Each array reader returns ``(images, labels)`` with ``images`` a uint8 array of shape
(N, H, W, 3) (RGB) or (N, H, W) (grayscale) and ``labels`` an int64 array of shape (N,):
``read_fashion_mnist`` (idx files), ``read_cifar`` (CIFAR-10/100 python pickles, folder or
.tar.gz), ``read_stl10`` (binary files, memory-mapped). Image folders of any size are listed
by ``list_image_folder`` and decoded one file at a time by ``load_rgb``.
The loaders and the ``data_prep`` writers both read raw data through this module; a
missing source or a wrong layout raises ``SourceError`` with a one-line message naming the
path and the layout expected.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class SourceError(FileNotFoundError):
    """A dataset source is missing or not in the layout expected (message: one line)."""


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


# --------------------------------------------------------------------------------------
# Class names
# --------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer",
                 "dog", "horse", "monkey", "ship", "truck")


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


# --------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: the official python-pickle layout (folder or .tar.gz)
# --------------------------------------------------------------------------------------

CIFAR_LAYOUTS = {
    "cifar10": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
                    train=tuple(f"data_batch_{i}" for i in range(1, 6)), val=("test_batch",),
                    meta="batches.meta", labels=b"labels", names=b"label_names", classes=10),
    "cifar100": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz",
                     train=("train",), val=("test",),
                     meta="meta", labels=b"fine_labels", names=b"fine_label_names", classes=100),
}


_NUMPY_CORE = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR batch cannot run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("core.multiarray", "_reconstruct"), ("core.multiarray", "scalar"),
                ("core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core
        short = module.split(".", 1)[1].lstrip("_") if module.startswith("numpy.") else module
        if (short, name) not in self._ALLOWED and (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if short.startswith("core."):
            module = f"{_NUMPY_CORE}.{short[len('core.'):]}"
        return super().find_class(module, name)


def _cifar_expected(variant: str) -> str:
    lay = CIFAR_LAYOUTS[variant]
    return (f"expected the official python version: a {lay['folder']}/ folder "
            f"({', '.join(lay['train'] + lay['val'])}, {lay['meta']}), {lay['archive']}, "
            "or a folder holding either")


def _cifar_load(src: str | os.PathLike, variant: str, names: tuple[str, ...]) -> dict[str, dict]:
    """Unpickle the named members of a CIFAR folder or archive (one pass over a tar)."""
    if variant not in CIFAR_LAYOUTS:
        raise ValueError(f"variant={variant!r}: expected one of {sorted(CIFAR_LAYOUTS)}")
    lay, src = CIFAR_LAYOUTS[variant], Path(src)
    if not src.exists():
        raise SourceError(f"{src}: no such file or directory ({_cifar_expected(variant)})")

    def unpickle(f, where):
        try:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
        except Exception as e:  # noqa: BLE001 - any failure means a bad batch file
            raise SourceError(f"{where}: not a CIFAR python batch "
                              f"({type(e).__name__}: {e})") from None
        if not isinstance(obj, dict):
            raise SourceError(f"{where}: not a CIFAR python batch "
                              f"(a {type(obj).__name__}, not a dict)")
        # the official (Python 2) files give bytes keys; accept str keys of re-pickled copies
        return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}

    folder = src if (src / lay["meta"]).is_file() else src / lay["folder"]
    if folder.is_dir():
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise SourceError(f"{folder}: missing {', '.join(missing)} "
                              f"({_cifar_expected(variant)})")
        out = {}
        for n in names:
            with open(folder / n, "rb") as f:
                out[n] = unpickle(f, folder / n)
        return out
    archive = src if src.is_file() else src / lay["archive"]
    if not archive.is_file():
        raise SourceError(f"{src}: not a {variant} source ({_cifar_expected(variant)})")
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise SourceError(f"{archive}: not a readable tar archive ({e}); "
                          f"{_cifar_expected(variant)}") from None
    out = {}
    with tar:
        try:
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and parts[-1] in names and lay["folder"] in parts[:-1]:
                    out[parts[-1]] = unpickle(tar.extractfile(member), f"{archive}:{member.name}")
                    if len(out) == len(names):
                        break
        except (tarfile.TarError, OSError, EOFError) as e:
            raise SourceError(f"{archive}: truncated or corrupt archive ({e})") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise SourceError(f"{archive}: no {lay['folder']}/{', '.join(missing)} inside "
                          f"({_cifar_expected(variant)})")
    return out


def read_cifar(src: str | os.PathLike, split: str,
               variant: str = "cifar10") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 (``variant="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels).

    ``src`` is the ``cifar-10-batches-py`` / ``cifar-100-python`` folder, the official
    ``.tar.gz`` (read in place), or a folder holding either. ``split`` is ``"train"``
    (50,000) or ``"val"`` (the 10,000 test images). Returns (N, 32, 32, 3) RGB and labels.
    """
    lay = CIFAR_LAYOUTS.get(variant)
    if lay is None:
        raise ValueError(f"variant={variant!r}: expected one of {sorted(CIFAR_LAYOUTS)}")
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: expected 'train' or 'val'")
    batches = _cifar_load(src, variant, lay[split])
    images, labels = [], []
    for name in lay[split]:
        batch = batches[name]
        if b"data" not in batch or lay["labels"] not in batch:
            raise SourceError(f"{src}: {name} has no {b'data'!r} / {lay['labels']!r} entries "
                              f"({_cifar_expected(variant)})")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        y = np.asarray(batch[lay["labels"]], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(y):
            raise SourceError(f"{src}: {name} has data {data.shape} and {len(y)} labels "
                              "(expected N x 3072 and N labels)")
        if len(y) and (y.min() < 0 or y.max() >= lay["classes"]):
            raise SourceError(f"{src}: {name} has labels outside 0..{lay['classes'] - 1}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def cifar_classes(src: str | os.PathLike, variant: str = "cifar10") -> list[str]:
    """Class names from ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100, fine labels)."""
    lay = CIFAR_LAYOUTS.get(variant)
    if lay is None:
        raise ValueError(f"variant={variant!r}: expected one of {sorted(CIFAR_LAYOUTS)}")
    meta = _cifar_load(src, variant, (lay["meta"],))[lay["meta"]]
    names = meta.get(lay["names"])
    if not isinstance(names, list) or len(names) != lay["classes"]:
        raise SourceError(f"{src}: {lay['meta']} has no list of {lay['classes']} {lay['names']!r}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


# --------------------------------------------------------------------------------------
# STL-10: the official binary layout (stl10_binary/)
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Image folders: train/<class>/<image>, val/<class>/<image> (ImageNet-100 and the like)
# --------------------------------------------------------------------------------------

IMAGE_FOLDER_LAYOUT = "train/<class>/<image> and val/<class>/<image> (JPEG, PNG, ...)"


class BadImageError(ValueError):
    """One image file cannot be used; the message is the reason (recorded, then skipped)."""


def list_image_folder(root: str | os.PathLike, split: str, classes: list[str] | None = None
                      ) -> tuple[list[tuple[Path, int]], list[str], list[tuple[Path, str]]]:
    """Every file under ``root/split/<class>/`` with its label, in torchvision ImageFolder's
    order (classes sorted, then ``sorted(os.walk(...))``, file names sorted).

    Classes are the sorted non-hidden sub-folders of ``train/``; pass them as ``classes``
    when listing ``val`` (a val class folder that train lacks is an error, a missing one is
    not). Symbolic links to folders are followed, but every real folder is listed once: a
    link back to the split, to a class folder or to a folder already listed (a loop) is not
    followed and is returned in the third element, ``(link, reason)``, as is a class folder
    that is the same real folder as an earlier class. Files are not opened here: see
    :func:`load_rgb`.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: no such directory (expected {IMAGE_FOLDER_LAYOUT})")
    base = root / split
    if not base.is_dir():
        raise SourceError(f"{base}: no such directory (expected {IMAGE_FOLDER_LAYOUT})")
    folders = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = folders
        if not classes:
            raise SourceError(f"{base}: no class folders (expected {IMAGE_FOLDER_LAYOUT})")
    else:
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise SourceError(f"{base}: class folders not in train/: {', '.join(unknown[:5])}"
                              f"{' ...' if len(unknown) > 5 else ''}")

    def real(path: Path) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    # Real folder -> the first path it is listed under; the split folder and every class
    # folder are claimed before walking, so no link can pull another class's images in.
    owner = {real(base): base}
    for name in classes:
        if (base / name).is_dir():
            owner.setdefault(real(base / name), base / name)
    samples, not_followed = [], []
    for label, name in enumerate(classes):
        top = base / name
        if not top.is_dir():
            continue
        if owner[real(top)] != top:
            not_followed.append((top, f"same folder as {owner[real(top)].relative_to(root)} "
                                      "(listed there)"))
            continue
        walked = []
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            keep = []
            for d in sorted(dirnames):
                path = Path(dirpath) / d
                first = owner.setdefault(real(path), path)
                if first == path:
                    keep.append(d)
                else:
                    not_followed.append((path, f"link to {first.relative_to(root)}, "
                                               "a folder already listed"))
            dirnames[:] = keep
            walked.append((dirpath, filenames))
        for dirpath, filenames in sorted(walked):
            samples += [(Path(dirpath) / f, label) for f in sorted(filenames)]
    if not samples:
        raise SourceError(f"{base}: the class folders hold no files "
                          f"(expected {IMAGE_FOLDER_LAYOUT})")
    return samples, list(classes), not_followed


def _source_format(im: Image.Image) -> str:
    """PIL's mode, with ``;16`` when the file holds 16 bits per sample ("RGB;16", "I;16"):
    PIL reads 16-bit RGB(A) as 8-bit RGB(A) and 16-bit grey as mode I;16 or I."""
    mode = "I;16" if im.mode.startswith("I;16") else im.mode
    rawmode = ""
    if im.tile:  # before load(): how the file stores its samples
        args = im.tile[0].args
        rawmode = args if isinstance(args, str) else (args[0] if args else "")
    if ";16" in str(rawmode) and not mode.endswith(";16"):
        mode += ";16"
    return mode


def _grey16_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit grey to 8-bit RGB by its high byte (v >> 8, how PIL reads 16-bit RGB), a
    transparent grey value composited on white."""
    from PIL import Image

    values = np.asarray(im).astype(np.uint32)
    grey = Image.fromarray((values >> 8).astype(np.uint8), "L")
    if "transparency" not in im.info:
        return grey.convert("RGB")
    alpha = Image.fromarray(np.where(values == im.info["transparency"], 0, 255).astype(np.uint8))
    white = Image.new("RGB", grey.size, (255, 255, 255))
    return Image.composite(grey.convert("RGB"), white, alpha)


def load_rgb(path: str | os.PathLike) -> tuple[Image.Image, str | None]:
    """Decode one image fully and convert it to 8-bit RGB.

    Returns ``(image, source_format)``, ``source_format`` being None when the file was 8-bit
    RGB, else PIL's mode with ``;16`` added for 16 bits per sample (see :func:`_source_format`).
    Greyscale, palette, CMYK etc. go through PIL's ``convert("RGB")``; images with
    transparency (RGBA, LA, PA, palette/greyscale with a transparent colour) are composited
    on white first. 16-bit images keep their high byte (v >> 8), so 16-bit mid-grey is 8-bit
    mid-grey (PIL's ``convert`` would clip 16-bit grey to white). Raises :class:`BadImageError`
    (reason in the message) for an empty, truncated, corrupt or non-image file and for 32-bit
    integer or float images, which have no defined 8-bit scale.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError("empty file (0 bytes)")
        with Image.open(path) as im:
            source = _source_format(im)
            im.load()
            mode = im.mode
            if source == "RGB":
                return im.copy(), None
            if source == "I;16":
                return _grey16_to_rgb(im), source
            if mode in ("I", "F"):
                raise BadImageError(f"{'32-bit integer' if mode == 'I' else 'floating-point'} "
                                    f"pixels (mode {mode}): no defined 8-bit scale")
            if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB"), source
            return im.convert("RGB"), source
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise BadImageError(f"too large to decode safely ({e})") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL plugins raise many types on malformed files
        raise BadImageError(f"unreadable image ({type(e).__name__}: {e})") from None
