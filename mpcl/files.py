"""Output directories and the files written into them, for every writer of mpcl (runs, sweeps,
``reproduce``, ``data_prep``).

- :func:`exclusive`: one writer per output directory. The writer holds a POSIX record lock
  (``fcntl.lockf``) on ``DIRECTORY/.lock``; a second writer fails at once with
  :class:`OutputBusy`, naming the holder (pid, host, start time, read from the file). The
  kernel drops the lock when its process dies, however it dies, so a dead writer's lock never
  blocks and no pid is ever guessed at. POSIX locks reach NFS servers through lockd (NFSv3)
  or the protocol itself (NFSv4), and work on Lustre mounted with ``flock`` and on GPFS.
  Such a lock belongs to the process and is not inherited by forked children; closing *any*
  descriptor of the file releases it, hence one descriptor per directory per process here.
  Readers (``report``, ``eval``, ``optuna-dashboard``) never take it.
- :func:`write_atomic`: a file replaced whole (temporary file, fsync, rename), or left as it
  was; the temporary file never outlives a failure.
- :func:`append_line`: one line appended whole, or nothing (a failed append is cut back).
- :class:`WriteFailed`: a failed write (a full disk, a quota, an I/O error) as one line that
  names the file and the cause, and what was kept.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

LOCK_FILE = ".lock"

# the errors of the storage itself, by errno: what a user must fix outside mpcl
STORAGE_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
    errno.EFBIG: "file too large",
}
# the same causes as other libraries word them (SQLite, torch's zip writer, pyarrow)
_STORAGE_TEXT = {"no space left on device": errno.ENOSPC, "database or disk is full": errno.ENOSPC,
                 "disk quota exceeded": errno.EDQUOT, "read-only file system": errno.EROFS}


class OutputError(Exception):
    """An output that cannot be written: one line; ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class OutputBusy(OutputError):
    """Another process writes into this output directory now."""


class WriteFailed(OutputError):
    """A write failed for a reason of the storage (disk full, quota, I/O error)."""

    exit_code = 1


# -- one writer per directory ----------------------------------------------------------------

_held: dict[str, list[int]] = {}   # real path of a locked directory -> [descriptor, depth]


def _setting(key: str, value: Path) -> str:
    """How the user wrote it: ``out=runs/x`` (a config key), ``--out runs/x`` (an option)."""
    return f"{key} {value}" if key.startswith("--") else f"{key}={value}"


def _create_dir(directory: Path, key: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{_setting(key, directory)}: exists and is not a directory") from None
    except OSError as e:
        raise OutputError(f"{_setting(key, directory)}: cannot create the directory ({_strerror(e)})") from None


def _holder_text(fd: int) -> str:
    """'pid 4242 on host node-3 since 10:02', as the holder wrote it into the lock file."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode())
        since = time.localtime(float(holder["since"]))
        stamp = time.strftime("%H:%M" if since[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M", since)
        return f"pid {int(holder['pid'])} on host {holder['host']} since {stamp}"
    except (ValueError, KeyError, TypeError, OSError):   # written this instant, or not by mpcl
        return "another process"


@contextmanager
def exclusive(directory: str | os.PathLike, key: str = "out") -> Iterator[Path]:
    """Hold ``directory``'s lock (the directory is created) while the block runs. ``key``
    names the setting that chose the directory (``out``, ``--out``), for the messages.
    Re-entrant within a process. Raises :class:`OutputBusy` (another process holds it) or
    :class:`OutputError` (the directory cannot be created, or locks are not supported)."""
    import fcntl

    directory = Path(directory)
    _create_dir(directory, key)
    real = os.path.realpath(directory)
    if real in _held:
        _held[real][1] += 1
        try:
            yield directory
        finally:
            _held[real][1] -= 1
        return
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"{_setting(key, directory)}: cannot create {LOCK_FILE} in it ({_strerror(e)})") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _holder_text(fd)
        os.close(fd)
        if e.errno in (errno.EACCES, errno.EAGAIN):
            raise OutputBusy(f"{directory} is in use by {holder}; wait for it or choose another {key}") from None
        raise OutputError(f"{_setting(key, directory)}: the file system refuses a lock ({_strerror(e)}); "
                          "see the README on shared file systems") from None
    _held[real] = [fd, 1]
    try:
        _write_holder(fd)
        yield directory
    finally:
        del _held[real]
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)   # releases the lock


def _write_holder(fd: int) -> None:
    """Who holds the lock, for the message a second writer gets (best effort: a full disk
    still locks; the second writer then names 'another process')."""
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
              "command": " ".join(sys.argv)[:500]}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
    except OSError:
        pass


def wait_until_free(directory: str | os.PathLike) -> None:
    """Block until no other process holds ``directory``'s lock (returns at once when there
    is no lock file, or when this process holds it)."""
    import fcntl

    path = Path(directory) / LOCK_FILE
    if os.path.realpath(directory) in _held or not path.is_file():
        return
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


# -- writes that fail as one line ----------------------------------------------------------------

def _strerror(e: OSError) -> str:
    return (e.strerror or str(e)).lower() if isinstance(e, OSError) else str(e)


def storage_errno(error: BaseException) -> int | None:
    """The storage errno behind ``error`` (or its causes), from the exception or its text;
    None when it is not a storage problem."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRORS:
            return error.errno
        text = str(error).lower()
        for words, code in _STORAGE_TEXT.items():
            if words in text:
                return code
        error = error.__cause__ or error.__context__
    return None


def _megabytes(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB" if n < 1e7 else f"{n / 1e6:.0f} MB"
    return f"{max(n / 1e3, 1):.0f} kB"


def write_failed(path: str | os.PathLike, error: BaseException, needs: int | None = None,
                 kept: str | None = None) -> WriteFailed:
    """``error`` raised while writing ``path`` as one line: the file, the cause (from the
    errno; for an error without one, such as torch's zip writer on a short write, a full
    file system is recognised by its free space), what the write needed and what was kept."""
    code = storage_errno(error)
    if code is None and needs is not None and _free_bytes(Path(path)) < needs:
        code = errno.ENOSPC
    if code is not None:
        cause = STORAGE_ERRORS[code]
        if code in (errno.ENOSPC, errno.EDQUOT) and needs:
            cause += f" (needs about {_megabytes(needs)})"
    else:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        cause = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return WriteFailed(f"{path}: {cause}" + (f"; {kept}" if kept else ""))


def storage_failure(error: BaseException, path: str | os.PathLike | None = None) -> OutputError | None:
    """``error`` itself when it is an :class:`OutputError`; as :class:`WriteFailed` when a
    storage problem is behind it (naming the file the error names, else ``path``), for writes
    that mpcl does not make itself (a library's files, the Optuna study); None otherwise."""
    if isinstance(error, OutputError):
        return error
    if storage_errno(error) is None:
        return None
    cause = error
    while cause is not None and not getattr(cause, "filename", None):
        cause = cause.__cause__ or cause.__context__
    where = getattr(cause, "filename", None) or path
    if where is None:
        return WriteFailed(STORAGE_ERRORS[storage_errno(error)])
    return write_failed(where, error)


def _free_bytes(path: Path) -> int:
    for parent in (path, *path.parents):
        if parent.exists():
            return shutil.disk_usage(parent).free
    return 0


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], needs: int | None = None,
                 kept: str | None = None) -> Path:
    """Replace ``path`` with what ``write(file)`` writes: into a temporary file in the same
    directory, fsynced, then renamed over ``path``. Any failure removes the temporary file,
    leaves ``path`` as it was, and storage errors become :class:`WriteFailed`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())   # mkstemp's 0600 would hide results from the group
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path
    except (OSError, RuntimeError) as e:   # RuntimeError: torch.save's zip writer
        raise write_failed(path, e, needs, kept) from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write_text_atomic(path: str | os.PathLike, text: str, kept: str | None = None) -> Path:
    data = text.encode()
    return write_atomic(path, lambda f: f.write(data), needs=len(data), kept=kept)


def append_line(path: str | os.PathLike, line: str, kept: str | None = None) -> None:
    """Append ``line`` and a newline in one write; a failed write is cut back to the old end
    (which needs no space), so the file never holds a torn line."""
    path = Path(path)
    data = (line + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise write_failed(path, e, len(data), kept) from e
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            os.ftruncate(fd, end)
            raise write_failed(path, e, len(data), kept) from e
    finally:
        os.close(fd)
