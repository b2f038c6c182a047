"""Runs that must finish: a list of configs trained to their last epoch and evaluated, in this
process one after another (``engine.fit``) or as concurrent Ray runs that share the cluster
(each a ``TorchTrainer`` whose workers take ``scale.*``: fractional ``gpus_per_worker`` packs
several small-image runs onto one GPU; on CPUs they share the cores).

A run is finished when its directory holds ``result.json``: the last epoch's metrics and, with
``linear_epochs`` > 0, the evaluation of its last checkpoint (``run.py eval``'s kNN and linear
probe). Finished runs are skipped; unfinished ones resume from their checkpoint. A run whose
loss diverges is finished too (``result.json`` holds the reason): a rerun would diverge again.
Used by ``run.py reproduce`` and by a sweep's confirmation stage.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpcl.config import Config
from mpcl.launch import LaunchError
from mpcl.tracking import read_metrics, write_json

RESULT_FILE = "result.json"


def read_result(out: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(out) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_result(out: str | os.PathLike, result: dict[str, Any]) -> dict[str, Any]:
    write_json(Path(out) / RESULT_FILE, result)
    return result


def finish(cfg: Config, metrics: dict[str, Any], checkpoint: Path | None, linear_epochs: int) -> dict[str, Any]:
    """Evaluates the last checkpoint (when asked) and writes ``result.json``."""
    result: dict[str, Any] = {"metrics": metrics}
    if linear_epochs > 0:
        from mpcl.engine.evaluate import evaluate_checkpoint

        if checkpoint is None or not checkpoint.is_file():
            raise FileNotFoundError(f"{cfg.out}: no checkpoint to evaluate")
        result["eval"] = evaluate_checkpoint(str(checkpoint), linear_epochs=linear_epochs)
    return _write_result(cfg.out, result)


def run_local(cfg: Config, linear_epochs: int) -> dict[str, Any]:
    from mpcl.engine.local import LocalReporter
    from mpcl.engine.loop import DivergedError, fit

    try:
        metrics = fit(cfg, LocalReporter(cfg))
    except DivergedError as e:
        return _write_result(cfg.out, {"failed": str(e)})
    return finish(cfg, metrics, Path(cfg.out) / "checkpoints" / "last.pt", linear_epochs)


def latest_ray_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest ``checkpoint_*/state.pt`` Ray Train left in the run directory."""
    from mpcl.launch.worker import STATE_FILE

    found = sorted(Path(out).glob(f"checkpoint_*/{STATE_FILE}"))
    return found[-1] if found else None


def find_checkpoint(run: str | Path) -> Path:
    """The checkpoint of ``run``: a checkpoint file, or a run directory's newest one
    (``checkpoints/last.pt`` without Ray, ``checkpoint_*/state.pt`` with it)."""
    run = Path(run)
    if run.is_file():
        return run
    if (run / "checkpoints" / "last.pt").is_file():
        return run / "checkpoints" / "last.pt"
    found = latest_ray_checkpoint(run) if run.is_dir() else None
    if found is None:
        raise LaunchError(f"RUN {run}: no checkpoint (expected a checkpoint file, or a run directory with "
                          "checkpoints/last.pt or checkpoint_*/state.pt)")
    return found


def run_of(checkpoint: Path) -> Path:
    """The run directory of a checkpoint file: ``RUN/checkpoints/last.pt``, ``RUN/checkpoint_*/state.pt``."""
    return checkpoint.parent.parent


def run_on_ray(cfg: Config, linear_epochs: int, quiet: bool = True) -> dict[str, Any]:
    """The body of one Ray run (a task that reserves nothing itself): its ``TorchTrainer``
    takes the workers' resources, the evaluation a task with one worker's resources."""
    import ray

    from mpcl.launch.cluster import use_gpu
    from mpcl.launch.train import make_trainer
    from mpcl.launch.worker import failure_reason

    make_trainer(cfg, quiet=quiet).fit()
    reason = failure_reason(cfg.out)
    if reason:
        return _write_result(cfg.out, {"failed": reason})
    rows = read_metrics(cfg.out)
    metrics = rows[-1] if rows else {}
    if linear_epochs <= 0:
        return _write_result(cfg.out, {"metrics": metrics})
    gpus = cfg.scale.gpus_per_worker if use_gpu(cfg) else 0
    evaluate = ray.remote(num_cpus=cfg.scale.cpus_per_worker, num_gpus=gpus)(finish)
    return ray.get(evaluate.remote(cfg, metrics, latest_ray_checkpoint(cfg.out), linear_epochs))


def run_all(configs: list[Config], use_ray: bool, address: str | None = None, linear_epochs: int = 0,
            log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
            log_dir: str | os.PathLike | None = None) -> list[dict[str, Any] | None]:
    """Brings every config to a ``result.json``; returns the results in order (None where a
    run did not finish: a Ray run that crashed, its reason logged). Ray's driver logs go to
    ``log_dir/logs/`` (unless ``--verbose``), each run's worker output to its own ``logs/``."""
    todo = [c for c in configs if read_result(c.out) is None]
    if len(todo) < len(configs):
        log(f"{len(configs) - len(todo)} of {len(configs)} run(s) already finished: kept")
    if todo and not use_ray:
        for i, cfg in enumerate(todo):
            log(f"[{i + 1}/{len(todo)}] {cfg.method.name} seed {cfg.train.seed}: {cfg.out}")
            run_local(cfg, linear_epochs)
    elif todo:
        import ray

        from mpcl.launch.cluster import init_ray
        from mpcl.launch.console import verbose

        log(f"ray: {init_ray(address, log_dir=log_dir)}; {len(todo)} run(s), {todo[0].scale.workers} worker(s) each")
        task = ray.remote(num_cpus=0, memory=1)(run_on_ray)  # the trainers reserve the resources
        pending = {task.remote(c, linear_epochs, not verbose()): c for c in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cfg = pending.pop(done[0])
            try:
                ray.get(done[0])
                log(f"finished {cfg.method.name} seed {cfg.train.seed}: {cfg.out}")
            except Exception as e:  # a crashed run stays unfinished: a rerun resumes it
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                log(f"run {cfg.out} crashed: {first}")
    return [read_result(c.out) for c in configs]
