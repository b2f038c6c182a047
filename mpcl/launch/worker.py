"""What runs in each Ray Train worker: the engine's loop with a reporter that reports to Ray
Train, and the record of a run that must not be retried (``out/FAILED.json``).

Every worker calls ``fit(cfg, RayReporter(cfg))``. The reporter calls ``ray.train.report``
once per epoch on every worker (rank 0 attaches the checkpoint, a directory holding
``state.pt``) and resumes from ``ray.train.get_checkpoint()``: after a worker failure
(``scale.max_failures``) and on a rerun with the same ``out``. Rank 0 also keeps the run's
record (``metrics.jsonl``, ``config.yaml``, wandb), copied to ``out`` when it is a URI.

A diverging run (NaN/inf loss) is not a worker failure to retry: rank 0 writes
``out/FAILED.json`` with the reason, every worker returns, and the driver raises
``DivergedError``. A config or data error a worker raises is recorded there too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mpcl.config import Config
from mpcl.launch import LaunchError
from mpcl.files import storage_errno
from mpcl.launch.storage import Mirror, is_uri, join, read_text
from mpcl.tracking import write_json

FAILED_FILE = "FAILED.json"
LOG_DIR = "logs"                  # the workers' output (quiet runs) and rank 0's progress
PROGRESS_FILE = "progress.json"
STATE_FILE = "state.pt"
# the keys every report carries for Tune: epochs trained, and the objective's last measured value
EPOCHS_KEY = "epochs_done"
OBJECTIVE_KEY = "objective"


def objective_keys(count: int) -> list[str]:
    """The report keys of a trial's objectives: ``objective`` for one; ``objective_0``,
    ``objective_1``, ... for several (in the sweep file's order)."""
    return [OBJECTIVE_KEY] if count == 1 else [f"{OBJECTIVE_KEY}_{i}" for i in range(count)]


def failure_reason(out: str | os.PathLike) -> str | None:
    failure = read_failure(out)
    return failure["reason"] if failure else None


def read_failure(out: str | os.PathLike) -> dict[str, str] | None:
    """``out/FAILED.json``: ``{"reason", "kind"}``, kind ``diverged``, ``error`` (a config or
    data error raised in a worker: it would fail the same way again) or ``io`` (a write that
    failed for lack of space or an I/O error)."""
    where = join(out, FAILED_FILE)
    if is_uri(out):
        text = read_text(where)
    else:
        text = Path(where).read_text() if Path(where).is_file() else None
    if text is None:
        return None
    try:
        failure = json.loads(text)
    except ValueError:
        return {"reason": f"{where}: unreadable", "kind": "error"}
    return {"reason": str(failure.get("reason", "failed")), "kind": str(failure.get("kind", "diverged"))}


def write_failure(out: str | os.PathLike, reason: str, kind: str) -> None:
    run_dir = Mirror(out)
    run_dir.local.mkdir(parents=True, exist_ok=True)
    write_json(run_dir.local / FAILED_FILE, {"reason": reason, "kind": kind})
    run_dir.push(FAILED_FILE)


class RayReporter:
    """The engine's ``Reporter`` inside a Ray Train worker."""

    def __init__(self, cfg: Config, objective: str | list[str] | None = None):
        import ray.train

        from mpcl.tracking import RunRecord

        self.cfg = cfg
        self.run_dir = Mirror(cfg.out)   # out itself, or this node's copy of a URI's files
        self.out = self.run_dir.local
        self.rank = ray.train.get_context().get_world_rank()
        self.objectives = [objective] if isinstance(objective, str) else list(objective or [])
        self.last_values: dict[str, float] = {}   # each objective's last measured value
        self.record = None
        self.saved_epoch: int | None = None   # the epoch of the run's latest checkpoint
        self.progress_at = 0.0
        if self.rank == 0:
            self.run_dir.pull("metrics.jsonl")   # a restart on another node continues the log
            self.record = RunRecord(cfg, self.out, push=self.run_dir.push)

    def latest_checkpoint(self) -> dict[str, Any] | None:
        import ray.train

        from mpcl.engine import checkpoint as ckpt

        state = None
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                state = ckpt.load(Path(d) / STATE_FILE)
        elif (self.out / "checkpoints" / "last.pt").is_file():  # left by run.py train --no-ray
            state = ckpt.load(self.out / "checkpoints" / "last.pt")
        if state is not None:
            self.last_values = {}
            self._with_objectives(dict(state.get("metrics", {})))
            self.saved_epoch = state["epoch"]
        return state

    def start(self, state: dict[str, Any] | None) -> None:
        """Rank 0 writes the run's files. A resumed attempt first reports the checkpoint's
        metrics again (every rank, no checkpoint, no log line): whoever waits on this run
        (Tune, Optuna's intermediate values) may not have received that report before the
        interruption, and a run that was already finished trains nothing more."""
        import ray.train

        if self.record is not None:
            self.record.start(state)
        if state is not None and state.get("metrics"):
            metrics = dict(state["metrics"])
            metrics[EPOCHS_KEY] = int(state["epoch"]) + 1
            ray.train.report(self._with_objectives(metrics))

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        import ray.train

        from mpcl.engine.checkpoint import save_atomic

        metrics = dict(metrics)
        metrics[EPOCHS_KEY] = int(metrics["epoch"]) + 1
        metrics = self._with_objectives(metrics)
        if self.record is not None:
            self.record.append(metrics)
        if state is not None:
            with tempfile.TemporaryDirectory(prefix="mpcl-ckpt-") as tmp:
                save_atomic(state, Path(tmp) / STATE_FILE)
                self._report_checkpoint(metrics, tmp, state)
            self.saved_epoch = state["epoch"]
        else:
            ray.train.report(metrics)

    def _with_objectives(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``metrics`` with each objective's last measured value under its key (an epoch
        without evaluation carries the last evaluation's)."""
        for metric in self.objectives:
            if metric in metrics:
                self.last_values[metric] = float(metrics[metric])
        for metric, key in zip(self.objectives, objective_keys(len(self.objectives))):
            if metric in self.last_values:
                metrics[key] = self.last_values[metric]
        return metrics

    def _report_checkpoint(self, metrics: dict[str, Any], folder: str, state: dict[str, Any]) -> None:
        """``ray.train.report`` with the checkpoint in ``folder``, which Ray Train copies into a
        new ``out/checkpoint_*``. A copy the storage refuses (a full disk) is removed again and
        raised as :class:`mpcl.files.WriteFailed`; the earlier checkpoints stay."""
        import ray.train
        from ray.train import Checkpoint

        from mpcl.engine.checkpoint import kept_note, state_bytes
        from mpcl.files import write_failed

        before = set(self.out.glob("checkpoint_*")) if not self.run_dir.remote else set()
        try:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
        except Exception as e:
            if storage_errno(e) is None:
                raise
            for partial in set(self.out.glob("checkpoint_*")) - before if not self.run_dir.remote else ():
                shutil.rmtree(partial, ignore_errors=True)
            raise write_failed(f"{self.out}/checkpoint_* (epoch {state['epoch']})", e, state_bytes(state),
                               kept_note(self.saved_epoch, self.cfg.train.resume)) from e

    def progress(self, epoch: int, done: int, total: int) -> None:
        """Rank 0 leaves its place in the epoch for the driver's bar, at most twice a second."""
        now = time.monotonic()
        if self.rank == 0 and (now - self.progress_at >= 0.5 or done == total):
            self.progress_at = now
            write_progress(self.out, epoch, done, total)

    def write_file(self, name: str, data: bytes) -> None:
        """Rank 0: into this node's copy of the run directory, then to ``out`` when it is a URI."""
        if self.record is not None:
            self.record.write_file(name, data)

    def close(self) -> None:
        if self.record is not None:
            self.record.close()


def data_fails_on_any_worker(cfg: Config) -> bool:
    """Every worker opens its data before training and all agree on the outcome: a worker
    (node) without readable data ends the run on every worker at once, recorded in
    ``FAILED.json``, with no restart and no collective left waiting for it."""
    import ray.train.torch
    import torch

    from mpcl import distributed as dist
    from mpcl.launch.preflight import check_data

    failed = 0
    try:
        check_data(cfg)
    except LaunchError as e:
        write_failure(cfg.out, str(e), "error")
        failed = 1
    flag = torch.tensor(failed, device=ray.train.torch.get_device())
    return bool(dist.all_reduce_max(flag).item())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One worker; with ``config["quiet"]`` its output (Ray Train's lines, a traceback) goes
    to ``out/logs/worker-<rank>.log``, not to the driver."""
    if not config.get("quiet"):
        return _train(config)
    import ray.train

    cfg: Config = config["cfg"]
    rank = ray.train.get_context().get_world_rank()
    with worker_output(Mirror(cfg.out).local, rank, bool(config.get("quiet"))):
        try:
            _train(config)
        except BaseException:   # Ray reports it only after this block: into the log it goes
            traceback.print_exc()
            raise


def _train(config: dict[str, Any]) -> None:
    """A NaN/inf loss (seen by every worker at the same step: an all-reduce) ends
    the run cleanly with ``FAILED.json``; so does data a worker cannot read (checked by all
    first). A config or data error raised later is recorded there too and raised, so that
    Ray stops the other workers; a restart that finds it returns at once instead of failing
    again ``scale.max_failures`` times."""
    from mpcl.config import ConfigError
    from mpcl.data.sources import SourceError
    from mpcl.engine.checkpoint import CheckpointError
    from mpcl.engine.loop import DivergedError, fit
    from mpcl.files import WriteFailed

    cfg: Config = config["cfg"]  # validated by the driver
    if read_failure(cfg.out) is not None or data_fails_on_any_worker(cfg):
        return
    reporter = None
    try:
        reporter = RayReporter(cfg, config.get("objective"))
        fit(cfg, reporter)
    except DivergedError as e:  # every worker sees it at the same step (an all-reduce)
        if reporter.rank == 0:
            write_failure(cfg.out, str(e), "diverged")
    except (ConfigError, SourceError, CheckpointError) as e:
        write_failure(cfg.out, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, "error")
        raise
    except WriteFailed as e:   # a full disk fails again on a restart: recorded (if it still fits)
        try:
            write_failure(cfg.out, str(e), "io")
        except WriteFailed:
            pass
        raise
    finally:
        if reporter is not None:
            reporter.close()


def worker_log_file(run_dir: str | os.PathLike, rank: int) -> Path:
    return Path(run_dir) / LOG_DIR / f"worker-{rank}.log"


@contextmanager
def worker_output(run_dir: str | os.PathLike, rank: int, quiet: bool):
    """Inside a Ray Train worker: its stdout and stderr (Ray Train's INFO lines, tracebacks,
    anything printed) appended to ``RUN/logs/worker-<rank>.log`` while the block runs, when
    ``quiet``. At the file-descriptor level, so that Ray's handlers, C++ logs and child
    processes follow."""
    if not quiet:
        yield None
        return
    path = worker_log_file(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def write_progress(run_dir: str | os.PathLike, epoch: int, step: int, steps: int) -> None:
    """Rank 0's place in the epoch, for the driver's bar (replaced whole, not synced: a
    progress file that a crash loses costs nothing)."""
    path = Path(run_dir) / LOG_DIR / PROGRESS_FILE
    tmp = path.with_name(f".{PROGRESS_FILE}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"epoch": epoch, "step": step, "steps": steps}))
        os.replace(tmp, path)
    except OSError:   # a full disk must not stop training for a progress bar
        tmp.unlink(missing_ok=True)
