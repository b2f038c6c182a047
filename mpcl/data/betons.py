"""The ``.beton`` files mpcl reads: their field schema, where they are, checking them, and
reading them without ffcv's Loader. ``data_prep`` (the only writer, a layer above) writes them.

A sample is ``(image, label, index)``: ``image`` an RGBImageField, ``label`` and ``index``
IntFields (``index`` the sample's position 0..N-1 in its split, ``label`` -1 for unlabeled data).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mpcl.data.sources import SourceError

if TYPE_CHECKING:
    from mpcl.config import Config
    from mpcl.data.datasets import DatasetSpec

FIELDS = {"image": "RGBImageField", "label": "IntField", "index": "IntField"}  # in file order
BETON_FILES = ("train.beton", "val.beton")


def data_dir(cfg: Config, spec: DatasetSpec) -> Path:
    """The directory holding train.beton / val.beton (``data.path``, else the spec's default)."""
    return Path(cfg.data.path or spec.default_path("ffcv"))


def writer_name(spec: DatasetSpec) -> str:
    """The ``data_prep`` writer of ``spec``'s raw files."""
    return spec.name if spec.name in ("fashion_mnist", "cifar10", "cifar100", "stl10") else "imagefolder"


def prep_args(spec: DatasetSpec, out: str | os.PathLike) -> list[str]:
    """``python -m data_prep``'s arguments that write the .beton files of ``spec`` into ``out``."""
    return ["-m", "data_prep", writer_name(spec), "--src", spec.raw_path, "--out", str(out)]


def prep_command(spec: DatasetSpec, out: str | os.PathLike) -> str:
    """The shell command of :func:`prep_args`, for messages."""
    return "python " + " ".join(prep_args(spec, out))


def check_beton(path: Path, spec: DatasetSpec) -> object:
    """Open ``path`` with ffcv's Reader and check the fields mpcl reads; returns the Reader.

    A missing file or a file without the fields is a ``SourceError`` with a one-line message.
    """
    from ffcv.reader import Reader

    if not path.is_file():
        raise SourceError(f"{path}: .beton file not found; create it with "
                          f"`{prep_command(spec, path.parent)}`")
    try:
        reader = Reader(str(path))
    except Exception as e:  # ffcv raises AssertionError / numpy errors on foreign files
        raise SourceError(f"{path}: not a readable ffcv .beton file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'unreadable header'}); "
                          f"rewrite it with `{prep_command(spec, path.parent)}`") from None
    for name, kind in FIELDS.items():
        if name not in reader.handlers:
            raise SourceError(f"{path}: field {name!r} missing (fields: "
                              f"{', '.join(reader.handlers) or 'none'}); mpcl needs "
                              f"{', '.join(FIELDS)}; rewrite it with "
                              f"`{prep_command(spec, path.parent)}`")
        if type(reader.handlers[name]).__name__ != kind:
            raise SourceError(f"{path}: field {name!r} is a {type(reader.handlers[name]).__name__}, "
                              f"expected {kind}")
    return reader


class BetonReader:
    """Random access to a .beton written by :func:`write_beton`, without ffcv's Loader.

    ``reader[i]`` is ``(image, label, index)`` with ``image`` an (H, W, 3) uint8 RGB array
    (JPEG samples decoded with OpenCV). ``labels`` and ``indices`` are int64 arrays.
    Usable as a map-style torch Dataset.
    """

    def __init__(self, path: str | os.PathLike):
        from ffcv.reader import Reader

        self.path = Path(path)
        reader = Reader(str(self.path))
        if reader.field_names != list(FIELDS):
            raise ValueError(f"{self.path}: fields {reader.field_names}, expected {list(FIELDS)}")
        columns = reader.metadata.dtype.names           # ffcv names them f0, f1, f2
        self.meta = reader.metadata[columns[0]]
        self.labels = np.asarray(reader.metadata[columns[1]], dtype=np.int64)
        self.indices = np.asarray(reader.metadata[columns[2]], dtype=np.int64)
        table = reader.alloc_table
        self._sizes = dict(zip(table["ptr"].tolist(), table["size"].tolist(), strict=True))
        self._data = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        if self._data is None:  # opened lazily: workers forked after __init__ map their own
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        m = self.meta[i]
        ptr, h, w = int(m["data_ptr"]), int(m["height"]), int(m["width"])
        buf = self._data[ptr: ptr + self._sizes[ptr]]
        if m["mode"] == 1:  # raw
            return np.array(buf[: h * w * 3]).reshape(h, w, 3)
        import cv2

        bgr = cv2.imdecode(np.asarray(buf), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[:2] != (h, w):
            raise ValueError(f"{self.path}: sample {i} is not a {w}x{h} JPEG")
        return np.ascontiguousarray(bgr[..., ::-1])

    def __getitem__(self, i: int):
        return self.image(i), int(self.labels[i]), int(self.indices[i])
