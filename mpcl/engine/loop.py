"""The training loop. It knows nothing of Ray: ``fit`` runs in one process (``run.py train
--no-ray``, tests, benchmarks) or inside each Ray Train worker, where a process group already
exists and a Ray reporter replaces the local one."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Protocol

import torch
from torch import nn

from mpcl import distributed as dist
from mpcl.config import Config, to_dict
from mpcl.data.batch import Batch
from mpcl.data.loaders import Loaders, build_loaders
from mpcl.engine import evaluate as ev
from mpcl.engine.checkpoint import CheckpointError, resume_mismatch, rng_state, set_rng_state
from mpcl.engine.optim import base_lr, build_optimizer, lr_factor, set_lr
from mpcl.methods import Method, StepOutput, build_method


# the keys of every epoch's metrics; evaluation epochs add EVAL_METRICS, the method its own
EPOCH_METRICS = ("epoch", "step", "lr", "time/epoch_s", "time/samples_per_s")
EVAL_METRICS = ("val/knn_top1", "val/online_top1", "val/align", "val/uniform")


def reported_metrics(cfg: Config) -> tuple[str, ...]:
    """Every metric name an epoch can report under ``cfg`` (what a sweep's objective may be)."""
    from mpcl.methods import METHODS

    return (*EPOCH_METRICS, *EVAL_METRICS, *METHODS[cfg.method.name].metric_names(cfg))


class DivergedError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


class Reporter(Protocol):
    """Where epochs go: the local one writes files, the Ray one calls ``ray.train.report``."""

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The run's last checkpoint (None in a fresh run directory); reads, writes nothing."""

    def start(self, state: dict[str, Any] | None) -> None:
        """The checkpoint (if any) is loaded: drop log lines of epochs that will be replayed
        and write the run's files (config.yaml). Nothing is written before this."""

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Called on every worker once per epoch; ``state`` is the checkpoint (rank 0 only)."""


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


@dataclass
class Runtime:
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    scaler: torch.amp.GradScaler | None


def resolve_device(cfg: Config) -> torch.device:
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device='cuda': no CUDA device is visible")
        if dist.is_distributed():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cuda")
    return torch.device("cpu")


def runtime(cfg: Config) -> Runtime:
    device = resolve_device(cfg)
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return Runtime(device, contextlib.nullcontext, None)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return Runtime(device, partial(torch.autocast, device_type=device.type, dtype=dtype), scaler)


def _progress(cfg: Config, total: int, desc: str):
    show = cfg.train.progress == "true" or (cfg.train.progress == "auto" and sys.stderr.isatty())
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not show or dist.rank() != 0, leave=False, dynamic_ncols=True)


def build(cfg: Config, rt: Runtime, loaders: Loaders) -> tuple[Method, torch.optim.Optimizer]:
    torch.manual_seed(cfg.train.seed)  # same initial weights on every worker
    method = build_method(cfg, loaders.spec.num_classes, loaders.num_train)
    if cfg.scale.sync_bn and dist.is_distributed():
        if rt.device.type == "cuda":
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        elif dist.rank() == 0:  # torch's SyncBatchNorm (and DDP with it) is GPU-only
            print("scale.sync_bn=true ignored on CPU workers: SyncBatchNorm needs GPUs", file=sys.stderr)
    method = method.to(rt.device)
    if cfg.model.channels_last and rt.device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    return method, build_optimizer(cfg, method.param_groups())


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


@torch.no_grad()
def evaluate(method: Method, loaders: Loaders, rt: Runtime, cfg: Config) -> dict[str, float]:
    """kNN top-1 on the validation split (bank: the training split without augmentation),
    the online probe's top-1, and alignment / uniformity of the normalised embeddings."""
    was_training = method.training
    method.eval()
    train_f, train_y = ev.extract(method, loaders.train_eval, rt.autocast)
    val_f, val_y = ev.extract(method, loaders.val, rt.autocast)
    metrics = {
        "val/knn_top1": ev.knn_top1(train_f, train_y, val_f, val_y, loaders.spec.num_classes,
                                    cfg.train.knn_k, cfg.train.knn_temperature),
        "val/online_top1": ev.probe_top1(method.probe, val_f, val_y),
    }
    z1s, z2s = [], []
    for batch in loaders.val_pairs:
        with rt.autocast():
            z1s.append(method.embed(method(batch.views[0])).float())
            z2s.append(method.embed(method(batch.views[1])).float())
    if z1s:
        z1, z2 = dist.gather_uneven(torch.cat(z1s)), dist.gather_uneven(torch.cat(z2s))
        metrics["val/align"] = ev.alignment(z1, z2)
        metrics["val/uniform"] = ev.uniformity(z1)
    metrics.update(method.extra_metrics(loaders, rt.autocast))
    method.train(was_training)
    return metrics


def fit(cfg: Config, reporter: Reporter) -> dict[str, float]:
    """Train ``cfg`` to ``train.epochs``, resuming from the reporter's latest checkpoint.
    Returns the last epoch's metrics."""
    rt = runtime(cfg)
    loaders = build_loaders(cfg, dist.rank(), dist.world_size(), rt.device)
    method, optimizer = build(cfg, rt, loaders)
    start_epoch, step, metrics = 0, 0, {}
    # train.resume=false was handled before the run started: its directory is a fresh one
    state = reporter.latest_checkpoint()
    if state is not None:
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
        start_epoch, step, metrics = state["epoch"] + 1, state["step"], dict(state.get("metrics", {}))
    reporter.start(state)
    train_step = distributed_step(method, rt.device)
    if cfg.train.compile:
        train_step = torch.compile(train_step)

    steps_per_epoch = len(loaders.train)
    total_steps = cfg.train.epochs * steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    min_ratio = cfg.optim.min_lr / base_lr(cfg)
    samples_per_step = cfg.data.batch_size

    for epoch in range(start_epoch, cfg.train.epochs):
        method.train()
        for p in method.on_epoch_start(epoch, loaders, rt.autocast):
            optimizer.state.pop(p, None)  # re-initialised parameters restart their momentum
        loaders.train.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        first_bad = torch.full((), -1, dtype=torch.long, device=rt.device)
        t0 = time.perf_counter()
        bar = _progress(cfg, steps_per_epoch, f"epoch {epoch}")
        for i, batch in enumerate(loaders.train):
            lr = set_lr(optimizer, lr_factor(step, total_steps, warmup_steps, min_ratio))
            out = optimizer_step(train_step, method, optimizer, rt, batch, epoch, step, total_steps)
            bad = ~torch.isfinite(out.loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, i), first_bad)
            for k, v in out.metrics.items():
                sums[k] = sums[k] + v.float() if k in sums else v.detach().float().clone()
            step += 1
            if (i + 1) % cfg.train.log_every == 0 or i + 1 == steps_per_epoch:
                _check_finite(first_bad, epoch)  # the only host sync of the loop
                bar.set_postfix(loss=f"{out.metrics['train/loss'].item():.4f}", lr=f"{lr:.3g}")
            bar.update()
        bar.close()
        _check_finite(first_bad, epoch)
        method.on_epoch_end(epoch)
        elapsed = time.perf_counter() - t0
        metrics = {"epoch": epoch, "step": step, "lr": lr}
        n = max(steps_per_epoch, 1)
        metrics.update({k: dist.all_reduce_mean(v / n).item() for k, v in sorted(sums.items())})
        metrics["time/epoch_s"] = elapsed
        metrics["time/samples_per_s"] = steps_per_epoch * samples_per_step / max(elapsed, 1e-9)
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            metrics.update(evaluate(method, loaders, rt, cfg))
        save = (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == cfg.train.epochs
        state = checkpoint_state(method, optimizer, rt.scaler, epoch, step, cfg, metrics) \
            if save and dist.rank() == 0 else None
        reporter.report(metrics, state)
    return metrics


def _check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    bad_step = int(dist.all_reduce_max(first_bad).item())
    if bad_step >= 0:
        raise DivergedError(f"diverged at epoch {epoch} step {bad_step}: the loss is NaN or inf "
                            "(the last good checkpoint is kept)")


def evaluate_checkpoint(path: str, overrides: list[str] | None = None, linear_epochs: int = 100) -> dict[str, Any]:
    """``run.py eval``: kNN top-1 and a linear probe on the frozen encoder of a checkpoint."""
    from mpcl.configure import from_dict
    from mpcl.engine.checkpoint import load as load_checkpoint

    state = load_checkpoint(path)
    cfg = from_dict(state["config"], overrides)
    rt = runtime(cfg)
    loaders = build_loaders(cfg, 0, 1, rt.device)
    method, _ = build(cfg, rt, loaders)
    method.load_state_dict(state["model"])
    method.eval()
    train_f, train_y = ev.extract(method, loaders.train_eval, rt.autocast)
    val_f, val_y = ev.extract(method, loaders.val, rt.autocast)
    n = loaders.spec.num_classes
    return {
        "checkpoint": str(path), "epoch": state["epoch"], "method": cfg.method.name,
        "knn_top1": ev.knn_top1(train_f, train_y, val_f, val_y, n, cfg.train.knn_k, cfg.train.knn_temperature),
        "linear_top1": ev.linear_probe(train_f, train_y, val_f, val_y, n, epochs=linear_epochs),
        "online_top1": ev.probe_top1(method.probe, val_f, val_y),
        **method.extra_metrics(loaders, rt.autocast),  # e.g. mcl's per-network metrics
    }
