"""Training through Ray Train: one ``TorchTrainer`` whose workers run ``engine.fit``
(``mpcl.launch.worker``), for ``run.py train``, every sweep trial and repeated runs.

The run directory *is* Ray's run directory: ``storage_path`` = the parent of ``out`` and
``name`` = its last component, so Ray's ``checkpoint_*`` folders sit next to ``metrics.jsonl``
and a rerun with the same ``out`` restores the run from its storage. ``out`` may be a URI
(``s3://...``, ``gs://...``): Ray Train writes there through pyarrow and rank 0 copies its
files there after each change (``mpcl.launch.storage``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mpcl.config import Config
from mpcl.launch import LaunchError
from mpcl.launch.cluster import start_ray, use_gpu
from mpcl.launch.storage import Mirror, is_uri
from mpcl.launch.worker import FAILED_FILE, read_failure, train_loop_per_worker


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
        out = Path(cfg.out)
        storage_path, name = str(out.parent), out.name
    return RunConfig(
        name=name, storage_path=storage_path,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.scale.num_to_keep),
        failure_config=FailureConfig(max_failures=cfg.scale.max_failures),
        callbacks=callbacks or [],
    )


def make_trainer(cfg: Config, objective: str | list[str] | None = None, callbacks: list | None = None,
                 quiet: bool | None = None):
    """A ``TorchTrainer`` for ``cfg``; ``objective`` (a metric name) adds an ``objective`` key
    to every report (the last measured value) for Tune; a list of names adds one key each
    (``mpcl.launch.worker.objective_keys``). ``quiet`` (default: not
    ``--verbose``, as the driver sees it): the workers' output goes to ``out/logs/``."""
    from ray.train.torch import TorchTrainer

    from mpcl.launch.console import verbose

    quiet = not verbose() if quiet is None else quiet
    loop_config: dict[str, Any] = {"cfg": cfg, "objective": objective, "quiet": quiet}
    return TorchTrainer(train_loop_per_worker=train_loop_per_worker, train_loop_config=loop_config,
                        scaling_config=scaling_config(cfg), run_config=run_config(cfg, callbacks))


def run_trainer(cfg: Config, objective: str | list[str] | None = None, callbacks: list | None = None,
                quiet: bool | None = None):
    """Fit one ``TorchTrainer`` (``run.py train`` and every sweep trial). Raises
    ``DivergedError`` (NaN/inf loss) or ``LaunchError`` (a config or data error a worker
    raised: one line, not retried)."""
    from mpcl.engine.loop import DivergedError
    from mpcl.files import WriteFailed

    Mirror(cfg.out).remove(FAILED_FILE)  # a reason left by an earlier attempt
    try:
        result = make_trainer(cfg, objective, callbacks, quiet).fit()
    except Exception as e:
        failure = read_failure(cfg.out)
        if failure is None:
            reason = _worker_line(e, "WriteFailed: ")   # FAILED.json did not fit on the disk
            if reason:
                raise WriteFailed(reason) from None
            raise
        result = None
    failure = read_failure(cfg.out)
    if failure is not None:
        if failure["kind"] == "diverged":
            raise DivergedError(failure["reason"])
        if failure["kind"] == "io":
            raise WriteFailed(failure["reason"])
        raise LaunchError(failure["reason"])
    return result


def _worker_line(error: BaseException, prefix: str) -> str | None:
    """The message of the worker exception that Ray's error text quotes as ``prefix...``."""
    for line in str(error).splitlines():
        head, found, message = line.partition(prefix)
        if found and (not head.strip() or head.rstrip().endswith(".")):
            return message.strip()
    return None


def train(cfg: Config, address: str | None = None) -> dict[str, Any]:
    """``run.py train`` through Ray Train (``cfg`` as ``preflight`` left it, ``address`` as
    ``check_address`` returned it). Returns the last reported metrics; raises
    ``DivergedError`` (NaN/inf loss) or ``LaunchError``."""
    from mpcl.engine.local import start_over
    from mpcl.launch.console import LOG_DIR, RunView, verbose

    local = Mirror(cfg.out).local
    if not cfg.train.resume:
        start_over(cfg.out)
    where = start_ray(cfg, address, log_dir=local)
    logs = "" if verbose() else f"; Ray's logs in {local / LOG_DIR}"
    print(f"ray: {where}; {cfg.scale.workers} worker(s), run directory {cfg.out}{logs}", file=sys.stderr)
    if verbose():   # Ray prints the workers' lines
        result = run_trainer(cfg)
    else:
        with RunView(cfg.out, cfg.train.epochs):
            result = run_trainer(cfg)
    return dict(result.metrics or {})


