"""Run and sweep directories that are URIs (``s3://bucket/path``, ``gs://...``): the storage
Ray Train and Tune write checkpoints to, through pyarrow's filesystems, when the nodes of a
cluster share no file system.

Ray Train and Tune write their own files there. Everything else mpcl keeps in a run or sweep
directory (``metrics.jsonl``, ``config.yaml``, ``FAILED.json``, ``sweep.yaml``,
``results.json``, a copy of ``optuna.db``) is written in a local folder and copied to the URI
after every change (:class:`Mirror`); readers (``run.py report``, ``eval``, ``--resume``)
fetch what they need into a local folder first (:func:`fetch`). Credentials and endpoints come
from the usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_
CREDENTIALS``, ...) and must be set on every node.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def _not_fetched(folder: str) -> bool:
    """What a reader never needs locally: Ray's checkpoints (large), Tune's state, hidden."""
    return folder == "tune" or folder.startswith(("checkpoint_", "."))


def is_uri(path: str | os.PathLike | None) -> bool:
    return path is not None and "://" in str(path)


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...`` for a URI or a path (a path keeps its own form)."""
    if not is_uri(base):
        return str(Path(base, *parts))
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def _fs(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(str(uri))


def kind(uri: str) -> str:
    """'file', 'dir' or 'missing'."""
    import pyarrow.fs

    fs, path = _fs(uri)
    info = fs.get_file_info(path)
    return {pyarrow.fs.FileType.File: "file", pyarrow.fs.FileType.Directory: "dir"}.get(info.type, "missing")


def read_bytes(uri: str) -> bytes | None:
    """The file's content, or None when there is none."""
    fs, path = _fs(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, OSError) as e:
        if kind(uri) == "missing":
            return None
        raise OSError(f"{uri}: {e}") from None


def read_text(uri: str) -> str | None:
    data = read_bytes(uri)
    return None if data is None else data.decode()


def upload(local: str | os.PathLike, uri: str) -> None:
    """One local file to ``uri`` (an object store writes it whole: no partial file is seen)."""
    fs, path = _fs(uri)
    with open(local, "rb") as src, fs.open_output_stream(path) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def delete(uri: str) -> None:
    fs, path = _fs(uri)
    if kind(uri) == "file":
        fs.delete_file(path)


def local_dir(uri: str) -> Path:
    """This machine's folder for what belongs to ``uri`` locally (the Optuna study, fetched
    copies): ``$MPCL_CACHE`` (default ``~/.cache/mpcl``)/``<scheme>/<bucket>/<path>-<hash>``."""
    scheme, _, rest = str(uri).rstrip("/").partition("://")
    tag = hashlib.sha1(str(uri).rstrip("/").encode()).hexdigest()[:8]
    root = Path(os.environ.get("MPCL_CACHE") or Path.home() / ".cache" / "mpcl")
    return root / scheme / f"{rest}-{tag}"


def fetch(uri: str, into: str | os.PathLike | None = None) -> Path:
    """A fresh local copy of the file or directory at ``uri`` (default: ``fetched/`` under
    :func:`local_dir`, apart from a driver's own files there), without Ray's checkpoints or
    Tune's state. ``FileNotFoundError`` when there is nothing."""
    import pyarrow.fs

    if into is None:
        into = local_dir(uri) / "fetched"
        shutil.rmtree(into, ignore_errors=True)
    into = Path(into)
    what = kind(uri)
    if what == "missing":
        raise FileNotFoundError(f"{uri}: no such file or directory")
    fs, root = _fs(uri)
    if what == "file":
        into.mkdir(parents=True, exist_ok=True)
        target = into / Path(root).name
        pyarrow.fs.copy_files(root, str(target), source_filesystem=fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        return target
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
        rel = Path(info.path[len(root):].lstrip("/"))
        if info.type != pyarrow.fs.FileType.File or any(map(_not_fetched, rel.parts[:-1])):
            continue
        (into / rel).parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(into / rel, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return into


class Mirror:
    """A run or sweep directory as a local folder. For a URI, ``local`` is this machine's
    folder for it (:func:`local_dir`; wandb's offline files stay there) and :meth:`push` copies
    one file to the URI after each change; :meth:`pull` brings one back (a restarted worker on
    another node continues ``metrics.jsonl``). For a path, ``local`` is the path itself and
    both are no-ops. Nothing is created here: writers make ``local`` when they write."""

    def __init__(self, out: str | os.PathLike, local: str | os.PathLike | None = None):
        self.out = str(out)
        self.remote = is_uri(out)
        self.local = Path(out) if not self.remote else Path(local) if local else local_dir(out)

    def pull(self, name: str) -> bool:
        """Replace the local copy of ``name`` with the URI's (none there: no local copy)."""
        if not self.remote:
            return (self.local / name).exists()
        data = read_bytes(join(self.out, name))
        if data is None:
            (self.local / name).unlink(missing_ok=True)
            return False
        self.local.mkdir(parents=True, exist_ok=True)
        (self.local / name).write_bytes(data)
        return True

    def push(self, name: str) -> None:
        if self.remote and (self.local / name).is_file():
            upload(self.local / name, join(self.out, name))

    def remove(self, name: str) -> None:
        (self.local / name).unlink(missing_ok=True)
        if self.remote:
            delete(join(self.out, name))


def fetch_for_report(uri: str) -> Path:
    """A local copy of a run or sweep directory at ``uri`` whose ``results.json`` points at the
    local copies of the trials, for ``run.py report``."""
    import json

    local = fetch(uri)
    results = local / "results.json"
    if results.is_file():
        summary = json.loads(results.read_text())
        prefix = str(uri).rstrip("/") + "/"
        for row in summary.get("trials", []):
            if isinstance(row, dict) and str(row.get("run_dir", "")).startswith(prefix):
                row["run_dir"] = str(local / row["run_dir"][len(prefix):])
        results.write_text(json.dumps(summary, indent=2))
    return local
