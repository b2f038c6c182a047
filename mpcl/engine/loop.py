"""The training loop. It knows nothing of Ray: ``fit`` runs in one process (``run.py train
--no-ray``, tests, benchmarks) or inside each Ray Train worker, where a process group already
exists and a Ray reporter replaces the local one."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch
from torch import nn

from mpcl import distributed as dist
from mpcl.config import Config, to_dict
from mpcl.data.batch import Batch
from mpcl.data.loaders import Loaders, build_loaders
from mpcl.engine.checkpoint import CheckpointError, resume_mismatch, rng_state, set_rng_state
from mpcl.engine.embedding import save_embedding
from mpcl.engine.evaluate import evaluate
from mpcl.engine.optim import base_lr, lr_factor, set_lr
from mpcl.engine.runtime import Runtime, build, runtime
from mpcl.methods import Method, StepOutput

# the keys of every epoch's metrics; evaluation epochs add EVAL_METRICS, the method its own
EPOCH_METRICS = ("epoch", "step", "lr", "time/epoch_s", "time/samples_per_s")
EVAL_METRICS = ("val/knn_top1", "val/online_top1", "val/align", "val/uniform")


def reported_metrics(cfg: Config) -> tuple[str, ...]:
    """Every metric name an epoch can report under ``cfg`` (what a sweep's objective may be)."""
    from mpcl.methods import METHODS

    return (*EPOCH_METRICS, *EVAL_METRICS, *METHODS[cfg.method.name].metric_names(cfg))


class DivergedError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""

    exit_code = 1   # the run failed (not its input): what the command line exits with


class Reporter(Protocol):
    """Where epochs go: the local one writes files, the Ray one calls ``ray.train.report``."""

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The run's last checkpoint (None in a fresh run directory); reads, writes nothing."""

    def start(self, state: dict[str, Any] | None) -> None:
        """The checkpoint (if any) is loaded: drop log lines of epochs that will be replayed
        and write the run's files (config.yaml). Nothing is written before this."""

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Called on every worker once per epoch; ``state`` is the checkpoint (rank 0 only)."""

    def progress(self, epoch: int, done: int, total: int) -> None:
        """Called after each step: ``done`` of the epoch's ``total`` steps (cheap: no sync)."""

    def write_file(self, name: str, data: bytes) -> None:
        """A file of the run beside its metrics, ``out/name``, replaced whole by ``data``
        (rank 0's call writes it; the other ranks' calls do nothing)."""


class TrainStep(nn.Module):
    """Wraps a method so that DDP sees the training step as ``forward``."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, batch: Batch, epoch: int) -> StepOutput:
        return self.method.training_step(batch, epoch)


def distributed_step(method: Method, device: torch.device) -> nn.Module:
    """``TrainStep(method)``, wrapped in DDP when there are several workers.

    DDP broadcasts rank 0's buffers before every forward pass (``broadcast_buffers=True``):
    BN running statistics stay identical on every worker, as in the seed repositories. The
    method's worker-consistent buffers (banks, queues) are registered as ignored instead, so
    they are neither broadcast per step nor synced at construction; ignoring them, rather than
    ``broadcast_buffers=False``, keeps that BN behaviour while dropping the per-step traffic."""
    step = TrainStep(method)
    if not dist.is_distributed():
        return step
    DDP = nn.parallel.DistributedDataParallel
    DDP._set_params_and_buffers_to_ignore_for_model(
        step, [f"method.{name}" for name in method.worker_consistent_buffers()])
    return DDP(step, device_ids=[device.index] if device.type == "cuda" else None)


def _progress(cfg: Config, total: int, desc: str):
    show = cfg.train.progress == "true" or (cfg.train.progress == "auto" and sys.stderr.isatty())
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not show or dist.rank() != 0, leave=False, dynamic_ncols=True)


def optimizer_step(train_step: nn.Module, method: Method, optimizer: torch.optim.Optimizer, rt: Runtime,
                   batch: Batch, epoch: int, step: int, total_steps: int) -> StepOutput:
    """One training step: forward and loss under autocast, backward, optimizer step, then the
    method's post-step update (momentum encoders). ``run.py bench step`` times exactly this."""
    with rt.autocast():
        out: StepOutput = train_step(batch, epoch)
    optimizer.zero_grad(set_to_none=True)
    if rt.scaler is not None:
        rt.scaler.scale(out.loss).backward()
        rt.scaler.step(optimizer)
        rt.scaler.update()
    else:
        out.loss.backward()
        optimizer.step()
    method.after_optimizer_step(step, total_steps)
    return out


def checkpoint_state(method: Method, optimizer, scaler, epoch: int, step: int, cfg: Config,
                     metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "model": method.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch, "step": step, "rng": rng_state(), "config": to_dict(cfg), "metrics": metrics,
    }


def resume(cfg: Config, state: dict[str, Any], method: Method, optimizer: torch.optim.Optimizer,
           rt: Runtime) -> None:
    """Load a checkpoint into the method, the optimizer (its hyperparameters stay the config's),
    the gradient scaler and the random generators; a checkpoint the config cannot hold is a
    one-line ``CheckpointError`` naming what changed."""
    try:
        method.load_state_dict(state["model"])
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])  # momentum buffers from the checkpoint,
    except (RuntimeError, ValueError, KeyError) as e:
        changed = resume_mismatch(state["config"], to_dict(cfg))
        detail = changed or f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise CheckpointError(f"{cfg.out}: cannot resume its checkpoint of epoch {state['epoch']} with this "
                              f"config ({detail}); set train.resume=false to start over (the old run is "
                              "moved aside) or choose another out") from None
    for group, h in zip(optimizer.param_groups, hyper):  # hyperparameters from the config
        group.update(h)
    if rt.scaler is not None and state.get("scaler"):
        rt.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])


@dataclass
class Schedule:
    """The run's step counts and learning-rate schedule, fixed before the first epoch."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    min_ratio: float

    @classmethod
    def of(cls, cfg: Config, loaders: Loaders) -> Schedule:
        steps = len(loaders.train)
        return cls(steps, cfg.train.epochs * steps, round(cfg.optim.warmup_epochs * steps),
                   cfg.optim.min_lr / base_lr(cfg))


def train_epoch(cfg: Config, epoch: int, step: int, train_step: nn.Module, method: Method,
                optimizer: torch.optim.Optimizer, rt: Runtime, loaders: Loaders,
                schedule: Schedule, reporter: Reporter | None = None) -> dict[str, float]:
    """One epoch of optimizer steps from global step ``step``: its metrics (the method's step
    metrics averaged over steps and workers, the step count, the last lr, the timing).
    A NaN/inf loss raises ``DivergedError``, checked every ``train.log_every`` steps."""
    method.train()
    for p in method.on_epoch_start(epoch, loaders, rt.autocast):
        optimizer.state.pop(p, None)  # re-initialised parameters restart their momentum
    loaders.train.set_epoch(epoch)
    n = schedule.steps_per_epoch
    sums: dict[str, torch.Tensor] = {}
    first_bad = torch.full((), -1, dtype=torch.long, device=rt.device)
    t0 = time.perf_counter()
    bar = _progress(cfg, n, f"epoch {epoch}")
    for i, batch in enumerate(loaders.train):
        lr = set_lr(optimizer, lr_factor(step, schedule.total_steps, schedule.warmup_steps, schedule.min_ratio))
        out = optimizer_step(train_step, method, optimizer, rt, batch, epoch, step, schedule.total_steps)
        bad = ~torch.isfinite(out.loss.detach())
        first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, i), first_bad)
        for k, v in out.metrics.items():
            sums[k] = sums[k] + v.float() if k in sums else v.detach().float().clone()
        step += 1
        if (i + 1) % cfg.train.log_every == 0 or i + 1 == n:
            _check_finite(first_bad, epoch)  # the only host sync of the loop
            bar.set_postfix(loss=f"{out.metrics['train/loss'].item():.4f}", lr=f"{lr:.3g}")
        bar.update()
        if reporter is not None:
            reporter.progress(epoch, i + 1, n)
    bar.close()
    _check_finite(first_bad, epoch)
    method.on_epoch_end(epoch)
    elapsed = time.perf_counter() - t0
    metrics = {"epoch": epoch, "step": step, "lr": lr}
    metrics.update({k: dist.all_reduce_mean(v / max(n, 1)).item() for k, v in sorted(sums.items())})
    metrics["time/epoch_s"] = elapsed
    metrics["time/samples_per_s"] = n * cfg.data.batch_size / max(elapsed, 1e-9)
    return metrics


def fit(cfg: Config, reporter: Reporter) -> dict[str, float]:
    """Train ``cfg`` to ``train.epochs``, resuming from the reporter's latest checkpoint.
    Returns the last epoch's metrics."""
    rt = runtime(cfg)
    loaders = build_loaders(cfg, dist.rank(), dist.world_size(), rt.device)
    if not loaders.spec.labelled and dist.rank() == 0:
        print(f"data: {loaders.spec.name} has no labels: no kNN or probe accuracy (val/knn_top1, "
              "val/online_top1); val/align and val/uniform are reported", file=sys.stderr, flush=True)
    method, optimizer = build(cfg, rt, loaders)
    start_epoch, step, metrics = 0, 0, {}
    # train.resume=false was handled before the run started: its directory is a fresh one
    state = reporter.latest_checkpoint()
    if state is not None:
        resume(cfg, state, method, optimizer, rt)
        start_epoch, step, metrics = state["epoch"] + 1, state["step"], dict(state.get("metrics", {}))
    reporter.start(state)
    train_step = distributed_step(method, rt.device)
    if cfg.train.compile:
        train_step = torch.compile(train_step)
    schedule = Schedule.of(cfg, loaders)
    for epoch in range(start_epoch, cfg.train.epochs):
        metrics = train_epoch(cfg, epoch, step, train_step, method, optimizer, rt, loaders, schedule, reporter)
        step = metrics["step"]
        last = epoch + 1 == cfg.train.epochs
        if (epoch + 1) % cfg.train.eval_every == 0 or last:
            # the last evaluation's validation features: a sample of them for the report's map
            keep = partial(save_embedding, loaders=loaders, cfg=cfg, epoch=epoch, write=reporter.write_file) \
                if last else None
            metrics.update(evaluate(method, loaders, rt, cfg, on_features=keep))
        save = (epoch + 1) % cfg.train.checkpoint_every == 0 or last
        state = checkpoint_state(method, optimizer, rt.scaler, epoch, step, cfg, metrics) \
            if save and dist.rank() == 0 else None
        reporter.report(metrics, state)
    return metrics


def _check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    bad_step = int(dist.all_reduce_max(first_bad).item())
    if bad_step >= 0:
        raise DivergedError(f"diverged at epoch {epoch} step {bad_step}: the loss is NaN or inf "
                            "(the last good checkpoint is kept)")
