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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mpcl.config import Config, to_dict
from mpcl.configure import from_dict
from mpcl.launch import LaunchError
from mpcl.launch.storage import Mirror, is_uri, join, read_text

FAILED_FILE = "FAILED.json"
STATE_FILE = "state.pt"
# Test-only hold: in an attempt that did not resume from a checkpoint, rank 0 reports this
# epoch (checkpoint included), then writes ``out/HELD`` and waits until ``out/RELEASE``
# exists. A test can so interrupt (or release) a run at a known point instead of a moment.
HOLD_ENV = "MPCL_HOLD_AFTER_EPOCH"
HELD_FILE, RELEASE_FILE = "HELD", "RELEASE"


# -- the Ray runtime ------------------------------------------------------------------------

GCS_PROBE_TIMEOUT_S = 5.0
# On a cluster that may grow (one mpcl joined rather than started), how long a run waits for
# the resources it asks for before it says what is missing.
SCALE_WAIT_ENV = "MPCL_SCALE_WAIT_S"
SCALE_WAIT_DEFAULT_S = 300.0


def check_address(address: str | None, timeout: float = GCS_PROBE_TIMEOUT_S) -> str | None:
    """The cluster to join: ``address``, else ``RAY_ADDRESS``, else None (start a local Ray).
    A plain host:port must answer as a Ray GCS (one gRPC call) within ``timeout``: nothing
    listening, or another server (the dashboard's HTTP port), is a ``LaunchError`` in
    seconds, where ``ray.init`` would retry for minutes. An authentication refusal is an
    answer too. Called once, before anything else is prepared."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address == "auto" or "://" in address or ":" not in address:
        return address
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    answered = {grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    try:
        with grpc.insecure_channel(address) as channel:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
    except grpc.RpcError as e:
        if e.code() not in answered:
            detail = (e.details() or e.code().name).strip().splitlines()[0][:160]
            raise LaunchError(f"--address {address}: no Ray cluster (GCS) answers there within "
                              f"{timeout:.0f} s ({e.code().name}: {detail})") from None
    except ValueError as e:  # a malformed target
        raise LaunchError(f"--address {address}: not a host:port ({e})") from None
    return address


def init_ray(address: str | None = None, num_cpus: int | None = None) -> str:
    """Join the cluster at ``address`` (as ``check_address`` returned it); with none, start a
    local Ray with this machine's CPUs and its dashboard on 127.0.0.1 only. Returns a
    description."""
    import ray

    if ray.is_initialized():
        return "the Ray already initialised in this process"
    quiet = {"log_to_driver": os.environ.get("MPCL_RAY_LOG_TO_DRIVER", "1") != "0",
             "configure_logging": True, "logging_level": "WARNING"}
    if address:
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


def worker_bundle(cfg: Config) -> dict[str, float]:
    """What one worker asks of a node (the CPU and GPU of ``scale.*``)."""
    bundle: dict[str, float] = {"CPU": float(cfg.scale.cpus_per_worker)}
    if use_gpu(cfg):
        bundle["GPU"] = float(cfg.scale.gpus_per_worker)
    return bundle


def workers_that_fit(bundle: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many workers of ``bundle`` the ``nodes`` (their resources) hold: identical bundles
    pack node by node, so this is exact."""
    total = 0
    for node in nodes:
        total += min(int(node.get(k, 0.0) / v + 1e-9) if v > 0 else 1 << 30 for k, v in bundle.items())
    return total


def _missing(cfg: Config, bundle: dict[str, float], nodes: list[dict[str, float]], key_prefix: str) -> str | None:
    """One line naming the key whose request the nodes cannot hold, or None."""
    s = cfg.scale
    if "GPU" in bundle and not any(n.get("GPU", 0) > 0 for n in nodes):  # only use_gpu=true gets here
        return f"{key_prefix}use_gpu={s.use_gpu}: the cluster has no GPU"
    for k, key in (("CPU", "cpus_per_worker"), ("GPU", "gpus_per_worker")):
        need = bundle.get(k, 0.0)
        largest = max((n.get(k, 0.0) for n in nodes), default=0.0)
        if need > largest:
            return (f"{key_prefix}{key}={getattr(s, key)}: no node of the cluster has {need:g} {k} "
                    f"(the largest has {largest:g})")
    fit = workers_that_fit(bundle, nodes)
    if fit < s.workers:
        asked = ", ".join(f"{v:g} {k}" for k, v in bundle.items())
        return (f"{key_prefix}workers={s.workers}: the cluster holds {fit} worker(s) of {asked} "
                f"(it has {', '.join(f'{sum(n.get(k, 0.0) for n in nodes):g} {k}' for k in bundle)})")
    return None


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_cluster_fits(cfg: Config, key_prefix: str = "scale.", can_grow: bool = False,
                       wait_s: float | None = None) -> None:
    """Fail (``LaunchError``, one line naming the key) when the cluster cannot hold the run's
    workers; Ray would wait for them forever. A cluster that ``can_grow`` (an autoscaler) is
    asked for them and given ``wait_s`` (``MPCL_SCALE_WAIT_S``, default 300 s) to add nodes."""
    bundle = worker_bundle(cfg)
    problem = _missing(cfg, bundle, _alive_nodes(), key_prefix)
    if problem is None:
        return
    if not can_grow:
        raise LaunchError(problem)
    from ray.autoscaler.sdk import request_resources

    if wait_s is None:
        try:
            wait_s = float(os.environ.get(SCALE_WAIT_ENV, SCALE_WAIT_DEFAULT_S))
        except ValueError:
            raise LaunchError(f"{SCALE_WAIT_ENV}={os.environ[SCALE_WAIT_ENV]!r}: expected seconds") from None
    print(f"ray: {problem}; asking the autoscaler and waiting up to {wait_s:.0f} s "
          f"({SCALE_WAIT_ENV})", file=sys.stderr, flush=True)
    request_resources(bundles=[bundle] * cfg.scale.workers)
    deadline = time.monotonic() + wait_s
    try:
        while problem is not None and time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
            problem = _missing(cfg, bundle, _alive_nodes(), key_prefix)
    finally:
        request_resources(bundles=[])
    if problem is not None:
        raise LaunchError(f"{problem} (still, after waiting {wait_s:.0f} s for the autoscaler)")


def run_config(cfg: Config, callbacks: list | None = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    if is_uri(cfg.out):
        storage_path, _, name = str(cfg.out).rstrip("/").rpartition("/")
    else:
        out = Path(cfg.out)
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

    loop_config: dict[str, Any] = {"cfg": to_dict(cfg), "objective": objective}
    if os.environ.get(HOLD_ENV):
        loop_config["hold_after_epoch"] = int(os.environ[HOLD_ENV])
    return TorchTrainer(train_loop_per_worker=train_loop_per_worker, train_loop_config=loop_config,
                        scaling_config=scaling_config(cfg), run_config=run_config(cfg, callbacks))


def failure_reason(out: str | os.PathLike) -> str | None:
    failure = read_failure(out)
    return failure["reason"] if failure else None


def read_failure(out: str | os.PathLike) -> dict[str, str] | None:
    """``out/FAILED.json``: ``{"reason", "kind"}``, kind ``diverged`` or ``error`` (a config or
    data error raised in a worker: it would fail the same way again)."""
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
    tmp = run_dir.local / f".{FAILED_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"reason": reason, "kind": kind}))
    os.replace(tmp, run_dir.local / FAILED_FILE)
    run_dir.push(FAILED_FILE)


def run_trainer(cfg: Config, objective: str | None = None, callbacks: list | None = None):
    """Fit one ``TorchTrainer`` (``run.py train`` and every sweep trial). Raises
    ``DivergedError`` (NaN/inf loss) or ``LaunchError`` (a config or data error a worker
    raised: one line, not retried)."""
    from mpcl.engine.loop import DivergedError

    Mirror(cfg.out).remove(FAILED_FILE)  # a reason left by an earlier attempt
    try:
        result = make_trainer(cfg, objective, callbacks).fit()
    except Exception:
        failure = read_failure(cfg.out)
        if failure is None:
            raise
        result = None
    failure = read_failure(cfg.out)
    if failure is not None:
        if failure["kind"] == "diverged":
            raise DivergedError(failure["reason"])
        raise LaunchError(failure["reason"])
    return result


def train(cfg: Config, address: str | None = None) -> dict[str, Any]:
    """``run.py train`` through Ray Train (``cfg`` as ``preflight`` left it, ``address`` as
    ``check_address`` returned it). Returns the last reported metrics; raises
    ``DivergedError`` (NaN/inf loss) or ``LaunchError``."""
    from mpcl.engine.local import start_over

    where = init_ray(address)
    check_cluster_fits(cfg, "scale.", can_grow=address is not None)
    if not cfg.train.resume:
        start_over(cfg.out)
    print(f"ray: {where}; {cfg.scale.workers} worker(s), run directory {cfg.out}", file=sys.stderr)
    result = run_trainer(cfg)
    return dict(result.metrics or {})


# -- the worker side ------------------------------------------------------------------------

class RayReporter:
    """The engine's ``Reporter`` inside a Ray Train worker."""

    def __init__(self, cfg: Config, objective: str | None = None, hold_after_epoch: int | None = None):
        import ray.train

        from mpcl.tracking import RunRecord

        self.cfg = cfg
        self.run_dir = Mirror(cfg.out)   # out itself, or this node's copy of a URI's files
        self.out = self.run_dir.local
        self.rank = ray.train.get_context().get_world_rank()
        self.objective = objective
        self.hold_after_epoch = hold_after_epoch
        self.resumed = False
        self.last_objective: float | None = None
        self.record = None
        if self.rank == 0:
            self.run_dir.pull("metrics.jsonl")   # a restart on another node continues the log
            self.record = RunRecord(cfg, self.out)

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

        if self.record is not None:
            self.record.start(state["epoch"] if state is not None else -1)
            self.run_dir.push("metrics.jsonl")
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

        metrics = dict(metrics)
        metrics["epochs_done"] = int(metrics["epoch"]) + 1
        if self.objective:
            if self.objective in metrics:
                self.last_objective = float(metrics[self.objective])
            if self.last_objective is not None:
                metrics["objective"] = self.last_objective
        if self.record is not None:
            self.record.append(metrics)
            self.run_dir.push("metrics.jsonl")
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
    """One worker. A NaN/inf loss (seen by every worker at the same step: an all-reduce) ends
    the run cleanly with ``FAILED.json``; so does data a worker cannot read (checked by all
    first). A config or data error raised later is recorded there too and raised, so that
    Ray stops the other workers; a restart that finds it returns at once instead of failing
    again ``scale.max_failures`` times."""
    from mpcl.config import ConfigError
    from mpcl.data.sources import SourceError
    from mpcl.engine.checkpoint import CheckpointError
    from mpcl.engine.loop import DivergedError, fit

    cfg = from_dict(config["cfg"])
    if read_failure(cfg.out) is not None or data_fails_on_any_worker(cfg):
        return
    reporter = None
    try:
        reporter = RayReporter(cfg, config.get("objective"), config.get("hold_after_epoch"))
        fit(cfg, reporter)
    except DivergedError as e:  # every worker sees it at the same step (an all-reduce)
        if reporter.rank == 0:
            write_failure(cfg.out, str(e), "diverged")
    except (ConfigError, SourceError, CheckpointError) as e:
        write_failure(cfg.out, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, "error")
        raise
    finally:
        if reporter is not None:
            reporter.close()
