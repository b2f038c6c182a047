"""Output files written safely: each under a hidden temporary name that carries the writer's
host and PID, renamed into place only when everything is complete (the manifest last). The
writer holds the folder's lock (:func:`mpcl.files.exclusive`), so temporary files it finds
were left by writers that died, and go."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

SPLIT_FILES = {"train": "train.beton", "val": "val.beton", "unlabeled": "unlabeled.beton"}


_TEMP = re.compile(r"^\.(?P<final>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.tmp$")


def temp_name(final: str, pid: int | None = None) -> str:
    """Hidden temporary name of an output while it is written (the writer's host and PID in
    it: whose leftover it is, for whoever looks)."""
    return f".{final}.{_host()}.{os.getpid() if pid is None else pid}.tmp"


def _host() -> str:
    return socket.gethostname().split(".")[0] or "host"


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete ``out``'s temporary files: called under the folder's lock, when no other writer
    of it can be running, so each was left by a writer that died (e.g. after a SIGKILL)."""
    removed = []
    for path in sorted(out.iterdir()):
        if _TEMP.match(path.name) and path.is_file():
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
