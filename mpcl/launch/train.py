"""Training through Ray Train: one ``TorchTrainer`` whose workers run ``engine.fit``.

Every worker calls ``fit(cfg, RayReporter(cfg))``. The reporter calls ``ray.train.report``
once per epoch on every worker (rank 0 attaches the checkpoint, a directory holding
``state.pt``) and resumes from ``ray.train.get_checkpoint()``: after a worker failure
(``scale.max_failures``) and on a rerun with the same ``out`` (Ray Train restores the run
named after ``out`` from its storage). Rank 0 also writes ``metrics.jsonl`` and ``config.yaml``
into ``out`` and logs to wandb.

The run directory *is* Ray's run directory: ``storage_path`` = the parent of ``out`` and
``name`` = its last component, so Ray's ``checkpoint_*`` folders sit next to ``metrics.jsonl``.

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
from pathlib import Path
from typing import Any

from mpcl.config import Config, dump, from_dict, to_dict
from mpcl.launch import LaunchError

FAILED_FILE = "FAILED.json"
STATE_FILE = "state.pt"


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

    out = Path(cfg.out).resolve()
    return RunConfig(
        name=out.name, storage_path=str(out.parent),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.scale.num_to_keep),
        failure_config=FailureConfig(max_failures=cfg.scale.max_failures),
        callbacks=callbacks or [],
    )


def make_trainer(cfg: Config, objective: str | None = None, callbacks: list | None = None):
    """A ``TorchTrainer`` for ``cfg``; ``objective`` (a metric name) adds an ``objective`` key
    to every report (the last measured value) for Tune."""
    from ray.train.torch import TorchTrainer

    cfg = from_dict(to_dict(cfg))
    cfg.out = str(Path(cfg.out).resolve())
    loop_config: dict[str, Any] = {"cfg": to_dict(cfg), "objective": objective}
    return TorchTrainer(train_loop_per_worker=train_loop_per_worker, train_loop_config=loop_config,
                        scaling_config=scaling_config(cfg), run_config=run_config(cfg, callbacks))


def failure_reason(out: str | os.PathLike) -> str | None:
    path = Path(out) / FAILED_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("reason", "failed")


def train(cfg: Config, address: str | None = None) -> dict[str, Any]:
    """``run.py train`` through Ray Train. Returns the last reported metrics; raises
    ``DivergedError`` (NaN/inf loss) or ``LaunchError``."""
    from mpcl.engine.loop import DivergedError

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

    def __init__(self, cfg: Config, objective: str | None = None):
        import ray.train

        from mpcl.tracking import MetricsLog

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.rank = ray.train.get_context().get_world_rank()
        self.objective = objective
        self.log = MetricsLog(self.out / "metrics.jsonl")
        self.resumed = False
        self.resumed_metrics: dict[str, Any] = {}
        self.reported = 0
        self.last_objective: float | None = None
        self.tracker = None
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / FAILED_FILE).unlink(missing_ok=True)
            dump(cfg, self.out / "config.yaml")
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
            self.resumed_metrics = dict(state.get("metrics", {}))
            self.last_objective = state.get("metrics", {}).get(self.objective) if self.objective else None
            if self.rank == 0:
                print(f"resuming after epoch {state['epoch']}", file=sys.stderr)
        if self.rank == 0:
            self.log.truncate_after(state["epoch"] if state is not None else -1)
        return state

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        import ray.train
        import torch
        from ray.train import Checkpoint

        self.reported += 1
        metrics = dict(metrics)
        metrics["epochs_done"] = int(metrics["epoch"]) + 1
        if self.objective:
            if self.objective in metrics:
                self.last_objective = float(metrics[self.objective])
            if self.last_objective is not None:
                metrics["objective"] = self.last_objective
        if self.rank == 0:
            self.log.append(metrics)
            if self.tracker is not None:
                self.tracker.log(metrics, step=int(metrics["epoch"]))
        if state is not None:
            with tempfile.TemporaryDirectory(prefix="mpcl-ckpt-") as tmp:
                torch.save(state, Path(tmp) / STATE_FILE)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)

    def report_if_silent(self) -> None:
        """A restart that found the run already finished (its last checkpoint is the last
        epoch) trains nothing; it reports the checkpoint's metrics again so that whoever waits
        on this run (Tune) sees the final result. No checkpoint, no metrics.jsonl line."""
        import ray.train

        if self.reported or not self.resumed_metrics:
            return
        metrics = dict(self.resumed_metrics)
        metrics["epochs_done"] = int(metrics["epoch"]) + 1
        if self.objective and self.last_objective is not None:
            metrics["objective"] = self.last_objective
        ray.train.report(metrics)

    def fail(self, reason: str) -> None:
        if self.rank == 0:
            tmp = self.out / f".{FAILED_FILE}.tmp"
            tmp.write_text(json.dumps({"reason": reason}))
            os.replace(tmp, self.out / FAILED_FILE)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from mpcl.engine.loop import DivergedError, fit

    cfg = from_dict(config["cfg"])
    reporter = RayReporter(cfg, config.get("objective"))
    try:
        fit(cfg, reporter)
        reporter.report_if_silent()
    except DivergedError as e:  # every worker sees it at the same step (an all-reduce)
        reporter.fail(str(e))
    finally:
        reporter.close()
