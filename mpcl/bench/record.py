"""What every benchmark report shares: the machine's CPU, the library versions, and writing a
marked section into ``BENCHMARKS.md`` in place."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def versions(*extra: str) -> dict[str, str]:
    """Versions of the libraries a benchmark depends on (read from the installed metadata, so
    nothing optional is imported), plus the distributions named in ``extra``."""
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "ffcv": _dist_version("ffcv"),
            "numba": _dist_version("numba"), "numpy": np.__version__,
            **{name: _dist_version(name) for name in extra}}


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Insert or replace the section between the ``start`` and ``end`` markers of ``path``
    (created with a title if missing); ``section`` includes both markers."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by `run.py bench`.\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
