"""What the driver settles before any training starts, with or without Ray.

``resolve_paths`` makes every path of a config absolute against the directory the command was
started in: Ray workers (and Tune trials) run in other working directories, so a relative
``data.path`` or ``out`` would point elsewhere inside them. Paths with a URI scheme
(``s3://``, ``gs://``, ``file://``) are left as they are.

``preflight`` then checks what can be checked in the driver (the data present and readable,
the batch not larger than the training split, ``out`` usable, CUDA present when asked for),
each failure a one-line ``LaunchError``, and writes nothing into ``out``. Missing
Fashion-MNIST ``.beton`` files are written first when the raw files are on the machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mpcl.config import Config, ConfigError, to_dict
from mpcl.config.compose import from_dict
from mpcl.data.datasets import dataset_spec, get_dataset
from mpcl.launch import LaunchError
from mpcl.launch.storage import is_uri


def absolute(path: str, base: Path) -> str:
    """``path`` against ``base`` unless it is absolute or a URI."""
    if is_uri(path) or Path(path).is_absolute():
        return path
    return os.path.normpath(base / path)


def resolve_paths(cfg: Config, base: str | os.PathLike | None = None) -> Config:
    """A copy of ``cfg`` whose ``data.path`` (its dataset's default when empty) and ``out``
    are absolute against ``base`` (default: the current directory), and, for a folder, with the
    crop its manifest gives in ``data.image_size``."""
    base = Path(base or os.getcwd())
    cfg = from_dict(to_dict(cfg))
    spec = dataset_spec(cfg.data)
    if spec.from_manifest and not cfg.data.image_size:   # the run's config keeps the crop its manifest gave
        cfg.data.image_size = spec.image_size
    cfg.data.path = absolute(cfg.data.path or spec.default_path(cfg.data.loader), base)
    cfg.out = absolute(cfg.out, base)
    return cfg


def write_fashion_mnist_betons_if_missing(beton_dir: str | os.PathLike) -> bool:
    """Write Fashion-MNIST's ``.beton`` files into ``beton_dir`` when one is missing and the
    raw files are on the machine (``make setup`` installs them); says so in one line.
    Returns whether it wrote them; raises ``LaunchError`` when writing fails."""
    from data_prep import prepare_if_missing
    from mpcl.data.betons import BETON_FILES, writer_name
    from mpcl.data.sources import fashion_mnist_present

    spec = get_dataset("fashion_mnist")
    beton_dir = Path(beton_dir)
    if all((beton_dir / f).is_file() for f in BETON_FILES) or not fashion_mnist_present(spec.raw_path):
        return False
    print(f"data: writing the Fashion-MNIST .beton files into {beton_dir} (from {spec.raw_path}, once)",
          file=sys.stderr, flush=True)
    try:
        prepare_if_missing(writer_name(spec), spec.raw_path, beton_dir)
    except Exception as e:  # SourceError (bad source), WriteError (failed write): each one line
        raise LaunchError(f"data.path={beton_dir}: could not write the Fashion-MNIST .beton files "
                          f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    return True


def check_out(out: str) -> None:
    """``out`` is a directory or can become one; nothing is created here."""
    if is_uri(out):
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise LaunchError(f"out={out}: exists and is not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LaunchError(f"out={out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LaunchError(f"out={out}: {existing} is not writable")


def check_storage(url: str) -> None:
    """``--storage``: an SQLite file's folder exists (Optuna creates the file, not the folder);
    any other database answers."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise LaunchError(f"--storage {url}: not a database URL (e.g. sqlite:///path/optuna.db, "
                          "postgresql://user@host/db)") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).resolve().parent
        if not folder.is_dir():
            raise LaunchError(f"--storage {url}: {folder} is not a directory")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise LaunchError(f"--storage {url}: {folder} is not writable")
        return
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(url).connect():
            pass
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise LaunchError(f"--storage {url}: cannot connect ({type(e).__name__}: {first})") from None


def training_split_size(cfg: Config) -> int:
    """Opens the training and validation data as the loaders will (one-line errors) and returns
    the number of samples the loss trains on (``data.train_split``, ``data.subset`` applied)."""
    from mpcl.data.sources import SourceError

    spec = dataset_spec(cfg.data)
    try:
        if cfg.data.loader == "ffcv":
            from mpcl.data.ffcv_loader import check_beton

            root = Path(cfg.data.path)
            n = int(check_beton(root / "train.beton", spec).num_samples)
            check_beton(root / "val.beton", spec)
            if cfg.data.train_split != "train":
                n = int(check_beton(root / f"{cfg.data.train_split}.beton", spec).num_samples)
        else:
            from mpcl.data.loaders import load_arrays

            n = len(load_arrays(spec, cfg.data.path, cfg.data.train_split)[1])
            load_arrays(spec, cfg.data.path, "val")
    except (SourceError, ConfigError) as e:
        raise LaunchError(str(e)) from None
    return min(n, cfg.data.subset) if cfg.data.subset else n


def check_cuda(cfg: Config, gpu_workers: bool) -> None:
    """``train.device=cuda`` (and, for workers on this machine, ``scale.use_gpu=true``) need a
    visible CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    if cfg.train.device == "cuda":
        raise LaunchError("train.device=cuda: no CUDA device is visible (use train.device=auto or cpu)")
    if gpu_workers and cfg.scale.use_gpu == "true":
        raise LaunchError("scale.use_gpu=true: no CUDA device is visible on this machine "
                          "(use scale.use_gpu=auto or false, or --address a cluster with GPUs)")


def preflight(cfg: Config, *, local_gpus: bool = True, check_out_dir: bool = True) -> Config:
    """Resolve the paths, write missing Fashion-MNIST files, check data, batch, ``out`` and
    CUDA. ``local_gpus``: the run's GPUs would be this machine's (``--no-ray`` or a local
    Ray); on a cluster they are checked against its resources once joined. Returns the
    resolved config; raises ``LaunchError``."""
    cfg = resolve_paths(cfg)
    if check_out_dir:
        check_out(cfg.out)
    check_cuda(cfg, gpu_workers=local_gpus)
    if cfg.data.dataset == "fashion_mnist" and cfg.data.loader == "ffcv" and not is_uri(cfg.data.path):
        write_fashion_mnist_betons_if_missing(cfg.data.path)
    if not is_uri(cfg.data.path):  # a URI is read by the loaders only
        check_data(cfg)
    return cfg


def check_data(cfg: Config) -> None:
    """The training and validation data open as the loaders will open them, and the global
    batch is not larger than the training split."""
    n_train = training_split_size(cfg)
    if cfg.data.batch_size > n_train:
        subset = f" with data.subset={cfg.data.subset}" if cfg.data.subset else ""
        raise LaunchError(f"data.batch_size={cfg.data.batch_size}: larger than the training split "
                          f"({n_train} samples{subset} in {cfg.data.path})")
