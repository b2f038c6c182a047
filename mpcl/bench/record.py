"""What every benchmark's report shares: the machine's CPU, the library versions, and where a
report goes. A run's results go to its results folder (``--out``, default ``runs/bench``:
``<bench>.md`` with its marked section and ``<bench>.json``); the tracked ``BENCHMARKS.md``
changes only when asked (``--record [FILE]``). Imports nothing heavy: every benchmark's options
(built with mpcl's parser) use it."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT = "runs/bench"
RECORD_FILE = "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nSections written by `mpcl bench` (one per benchmark and setup; a rerun replaces its own).\n"


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
    import numpy as np
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "ffcv": _dist_version("ffcv"),
            "numba": _dist_version("numba"), "numpy": np.__version__,
            **{name: _dist_version(name) for name in extra}}


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Insert or replace the section between the ``start`` and ``end`` markers of ``path``
    (created with a title if missing); ``section`` includes both markers."""
    text = path.read_text() if path.exists() else HEADER
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    _replace(path, text)


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@dataclass(frozen=True)
class Output:
    """Where a benchmark's report goes: the results folder (``None``: nowhere) and the markdown
    file the section is also recorded in (``None``: none, the default of the command line)."""
    out: Path | None = Path(DEFAULT_OUT)
    record: Path | None = None

    @classmethod
    def from_args(cls, args) -> Output:
        return cls(Path(args.out), Path(args.record) if args.record else None)

    def write(self, name: str, section: str, start: str, end: str, data: dict, say) -> None:
        """``out/<name>.md`` gets the section (beside the other setups' sections), ``out/<name>.json``
        this run's ``data``; the record file, when there is one, the section too."""
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            write_section(self.out / f"{name}.md", section, start, end)
            _replace(self.out / f"{name}.json", json.dumps(data, indent=1) + "\n")
            say(f"wrote {self.out / name}.md and {name}.json")
        if self.record is not None:
            write_section(self.record, section, start, end)
            say(f"recorded in {self.record}")


def add_output_arguments(p) -> None:
    """``--out`` and ``--record``, the same for every benchmark."""
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help="results folder: <bench>.md (the report's section) and <bench>.json (default %(default)s)")
    add_record_argument(p)


def add_record_argument(p) -> None:
    p.add_argument("--record", nargs="?", const=RECORD_FILE, default=None, metavar="FILE",
                   help=f"also write the section into FILE, the tracked record of measurements (without FILE: "
                        f"{RECORD_FILE} in the current directory); without --record it is left alone")
