"""Training through Ray Train: one ``TorchTrainer`` whose workers run ``engine.fit``.

Every worker calls ``fit(cfg, RayReporter(cfg))``. The reporter calls ``ray.train.report``
once per epoch on every worker (rank 0 attaches the checkpoint, a directory holding
``state.pt``) and resumes from ``ray.train.get_checkpoint()``: after a worker failure
(``scale.max_failures``) and on a rerun with the same ``out`` (Ray Train restores the run
named after ``out`` from its storage). Rank 0 also writes ``metrics.jsonl`` and ``config.yaml``
into ``out`` and logs to wandb.

The run directory *is* Ray's run directory: ``storage_path`` = the parent of ``out`` and
``name`` = its last component, so Ray's ``checkpoint_*`` folders sit next to ``metrics.jsonl``.
``out`` may be a URI (``s3://...``, ``gs://...``): Ray Train writes there through pyarrow and
rank 0 copies its files there after each change (``mpcl.launch.storage``).

A diverging run (NaN/inf loss) is not a worker failure to retry: rank 0 writes
``out/FAILED.json`` with the reason, every worker returns, and the driver raises
``DivergedError``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mpcl.config import Config, dump, from_dict, to_dict
from mpcl.launch import LaunchError
from mpcl.launch.storage import Mirror, is_uri, join, read_text

FAILED_FILE = "FAILED.json"
STATE_FILE = "state.pt"
# Test-only fault injection: in an attempt that did not resume from a checkpoint, the worker
# process of rank 0 exits hard during the epoch after this one (before reporting it), so the
# restarted worker group resumes from this epoch's checkpoint. Ray Train's controller collects
# reports by polling the workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s): a worker that
# dies sooner after its last report loses that report, and the restart resumes one epoch
# earlier. The injected fault first waits out two polls so the test is deterministic.
FAULT_ENV = "MPCL_FAULT_AFTER_EPOCH"
# Test-only hold: in an attempt that did not resume from a checkpoint, rank 0 reports this
# epoch (checkpoint included), then writes ``out/HELD`` and waits until ``out/RELEASE``
# exists. A test can so interrupt (or release) a run at a known point instead of a moment.
HOLD_ENV = "MPCL_HOLD_AFTER_EPOCH"
HELD_FILE, RELEASE_FILE = "HELD", "RELEASE"


# -- the Ray runtime ------------------------------------------------------------------------

def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A plain host:port that nothing listens on fails here in seconds (Ray itself retries
    for a minute or more before giving up)."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise LaunchError(f"--address {address}: no Ray cluster answers there ({e})") from None


def init_ray(address: str | None = None, num_cpus: int | None = None) -> str:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``); with neither, start a local Ray
    with this machine's CPUs and its dashboard on 127.0.0.1 only. Returns a description."""
    import ray

    if address:
        _check_reachable(address)
    if ray.is_initialized():
        return "the Ray already initialised in this process"
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"log_to_driver": os.environ.get("MPCL_RAY_LOG_TO_DRIVER", "1") != "0",
             "configure_logging": True, "logging_level": "WARNING"}
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **quiet)
        except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LaunchError(f"--address {address}: cannot join the Ray cluster ({first})") from None
        return f"the Ray cluster at {address}"
    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, dashboard_host="127.0.0.1", **quiet)
    return "a local Ray (dashboard on 127.0.0.1)"


def use_gpu(cfg: Config) -> bool:
    if cfg.scale.use_gpu != "auto":
        return cfg.scale.use_gpu == "true"
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def scaling_config(cfg: Config):
    from ray.train import ScalingConfig

    gpu = use_gpu(cfg)
    resources: dict[str, float] = {"CPU": cfg.scale.cpus_per_worker}
    if gpu:
        resources["GPU"] = cfg.scale.gpus_per_worker
    return ScalingConfig(num_workers=cfg.scale.workers, use_gpu=gpu, resources_per_worker=resources)


def run_config(cfg: Config, callbacks: list | None = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    if is_uri(cfg.out):
        storage_path, _, name = str(cfg.out).rstrip("/").rpartition("/")
    else:
        out = Path(cfg.out).resolve()
        storage_path, name = str(out.parent), out.name
    return RunConfig(
        name=name, storage_path=storage_path,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.scale.num_to_keep),
        failure_config=FailureConfig(max_failures=cfg.scale.max_failures),
        callbacks=callbacks or [],
    )


def make_trainer(cfg: Config, objective: str | None = None, callbacks: list | None = None):
    """A ``TorchTrainer`` for ``cfg``; ``objective`` (a metric name) adds an ``objective`` key
    to every report (the last measured value) for Tune."""
    from ray.train.torch import TorchTrainer

    cfg = from_dict(to_dict(cfg))
    if not is_uri(cfg.out):
        cfg.out = str(Path(cfg.out).resolve())
    loop_config: dict[str, Any] = {"cfg": to_dict(cfg), "objective": objective}
    if os.environ.get(FAULT_ENV):
        loop_config["fault_after_epoch"] = int(os.environ[FAULT_ENV])
    if os.environ.get(HOLD_ENV):
        loop_config["hold_after_epoch"] = int(os.environ[HOLD_ENV])
    return TorchTrainer(train_loop_per_worker=train_loop_per_worker, train_loop_config=loop_config,
                        scaling_config=scaling_config(cfg), run_config=run_config(cfg, callbacks))


def failure_reason(out: str | os.PathLike) -> str | None:
    text = read_text(join(out, FAILED_FILE)) if is_uri(out) else (
        (Path(out) / FAILED_FILE).read_text() if (Path(out) / FAILED_FILE).is_file() else None)
    if text is None:
        return None
    return json.loads(text).get("reason", "failed")


def train(cfg: Config, address: str | None = None) -> dict[str, Any]:
    """``run.py train`` through Ray Train. Returns the last reported metrics; raises
    ``DivergedError`` (NaN/inf loss) or ``LaunchError``."""
    from mpcl.engine.local import start_over
    from mpcl.engine.loop import DivergedError

    if not cfg.train.resume:
        start_over(cfg.out)
    where = init_ray(address)
    print(f"ray: {where}; {cfg.scale.workers} worker(s), run directory {cfg.out}", file=sys.stderr)
    result = make_trainer(cfg).fit()
    reason = failure_reason(cfg.out)
    if reason:
        raise DivergedError(reason)
    return dict(result.metrics or {})


# -- the worker side ------------------------------------------------------------------------

class RayReporter:
    """The engine's ``Reporter`` inside a Ray Train worker."""

    def __init__(self, cfg: Config, objective: str | None = None, fault_after_epoch: int | None = None,
                 hold_after_epoch: int | None = None):
        import ray.train

        from mpcl.tracking import MetricsLog

        self.cfg = cfg
        self.run_dir = Mirror(cfg.out)   # out itself, or this node's copy of a URI's files
        self.out = self.run_dir.local
        self.rank = ray.train.get_context().get_world_rank()
        self.objective = objective
        self.fault_after_epoch = fault_after_epoch
        self.hold_after_epoch = hold_after_epoch
        self.log = MetricsLog(self.out / "metrics.jsonl")
        self.resumed = False
        self.last_objective: float | None = None
        self.tracker = None
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            self.run_dir.pull("metrics.jsonl")   # a restart on another node continues the log
            self.run_dir.remove(FAILED_FILE)
            from mpcl.tracking.wandb_run import WandbRun

            self.tracker = WandbRun.start(cfg, self.out)

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
            self.resumed = True
            self.last_objective = state.get("metrics", {}).get(self.objective) if self.objective else None
        return state

    def start(self, state: dict[str, Any] | None) -> None:
        """Rank 0 writes the run's files. A resumed attempt first reports the checkpoint's
        metrics again (every rank, no checkpoint, no log line): whoever waits on this run
        (Tune, Optuna's intermediate values) may not have received that report before the
        interruption, and a run that was already finished trains nothing more."""
        import ray.train

        if self.rank == 0:
            self.log.truncate_after(state["epoch"] if state is not None else -1)
            self.run_dir.push("metrics.jsonl")
            dump(self.cfg, self.out / "config.yaml")
            self.run_dir.push("config.yaml")
            if state is not None:
                print(f"resuming after epoch {state['epoch']}", file=sys.stderr)
        if state is not None and state.get("metrics"):
            metrics = dict(state["metrics"])
            metrics["epochs_done"] = int(state["epoch"]) + 1
            if self.objective and self.last_objective is not None:
                metrics["objective"] = self.last_objective
            ray.train.report(metrics)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        import ray.train
        import torch
        from ray.train import Checkpoint

        if (self.fault_after_epoch is not None and not self.resumed and self.rank == 0
                and metrics["epoch"] == self.fault_after_epoch + 1):
            print(f"{FAULT_ENV}: the worker exits during epoch {metrics['epoch']} (fault injection)",
                  file=sys.stderr, flush=True)
            time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)) + 1)
            os._exit(1)
        metrics = dict(metrics)
        metrics["epochs_done"] = int(metrics["epoch"]) + 1
        if self.objective:
            if self.objective in metrics:
                self.last_objective = float(metrics[self.objective])
            if self.last_objective is not None:
                metrics["objective"] = self.last_objective
        if self.rank == 0:
            self.log.append(metrics)
            self.run_dir.push("metrics.jsonl")
            if self.tracker is not None:
                self.tracker.log(metrics, step=int(metrics["epoch"]))
        if state is not None:
            with tempfile.TemporaryDirectory(prefix="mpcl-ckpt-") as tmp:
                torch.save(state, Path(tmp) / STATE_FILE)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if self.hold_after_epoch == metrics["epoch"] and not self.resumed and self.rank == 0:
            (self.out / HELD_FILE).touch()
            while not (self.out / RELEASE_FILE).exists():
                time.sleep(0.1)

    def fail(self, reason: str) -> None:
        if self.rank == 0:
            tmp = self.out / f".{FAILED_FILE}.tmp"
            tmp.write_text(json.dumps({"reason": reason}))
            os.replace(tmp, self.out / FAILED_FILE)
            self.run_dir.push(FAILED_FILE)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from mpcl.engine.loop import DivergedError, fit

    cfg = from_dict(config["cfg"])
    reporter = RayReporter(cfg, config.get("objective"), config.get("fault_after_epoch"),
                           config.get("hold_after_epoch"))
    try:
        fit(cfg, reporter)
    except DivergedError as e:  # every worker sees it at the same step (an all-reduce)
        reporter.fail(str(e))
    finally:
        reporter.close()
