"""Output files written safely: each under a hidden temporary name that carries the writer's
host and PID, renamed into place only when everything is complete (the manifest last), and
leftovers of writers that died removed by the next run."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

SPLIT_FILES = {"train": "train.beton", "val": "val.beton", "unlabeled": "unlabeled.beton"}


_TEMP = re.compile(r"^\.(?P<final>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.tmp$")


def temp_name(final: str, pid: int | None = None) -> str:
    """Hidden temporary name of an output while it is written: the writer's host and PID in
    it, so a later run can tell a dead writer's leftovers from a live concurrent writer's."""
    return f".{final}.{_host()}.{os.getpid() if pid is None else pid}.tmp"


def _host() -> str:
    return socket.gethostname().split(".")[0] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # someone else's process
        return True
    return True


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete ``out``'s temporary files whose writer (same host, by PID) is no longer running,
    e.g. after a SIGKILL; those of a running writer and of other hosts are left alone."""
    removed = []
    for path in sorted(out.iterdir()):
        m = _TEMP.match(path.name)
        if m and m["host"] == _host() and not _alive(int(m["pid"])) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def commit(out: Path, tmp: dict[str, Path], manifest_tmp: Path) -> None:
    """Rename the written temporaries (split name -> path) into place, the manifest last.

    The old manifest goes first, so no moment shows a manifest beside files it does not
    describe; outputs of an older run that this one does not write go too."""
    (out / "manifest.json").unlink(missing_ok=True)
    for name, final in SPLIT_FILES.items():
        if name in tmp:
            os.replace(tmp[name], out / final)
        else:
            (out / final).unlink(missing_ok=True)
    os.replace(manifest_tmp, out / "manifest.json")
