"""CIFAR-10 / CIFAR-100: the official python-pickle layout (folder or .tar.gz), unpickled
without running code."""

from __future__ import annotations

import importlib.util
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from mpcl.data.sources.errors import SourceError

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
