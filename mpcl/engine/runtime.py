"""What a run is built on: the device, the precision (autocast and gradient scaler), and the
method with its optimizer on that device. Shared by training, evaluation and benchmarks."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from mpcl import distributed as dist
from mpcl.config import Config
from mpcl.data.loaders import Loaders
from mpcl.engine.optim import build_optimizer
from mpcl.methods import Method, build_method
from mpcl.models.timm_backbone import is_timm


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


def _sync_batchnorm(cfg: Config, method: Method) -> Method:
    """Every BatchNorm as a SyncBatchNorm (a model without one, a ViT's LayerNorms, is left as
    it is). timm's converter for timm backbones: it keeps the activation of timm's fused
    BatchNormAct layers, which torch's would drop."""
    if is_timm(cfg.model.backbone):
        from timm.layers import convert_sync_batchnorm
        return convert_sync_batchnorm(method)
    return nn.SyncBatchNorm.convert_sync_batchnorm(method)


def build(cfg: Config, rt: Runtime, loaders: Loaders) -> tuple[Method, torch.optim.Optimizer]:
    torch.manual_seed(cfg.train.seed)  # same initial weights on every worker
    method = build_method(cfg, loaders.spec.num_classes, loaders.num_train)
    if cfg.scale.sync_bn and dist.is_distributed():
        if rt.device.type == "cuda":
            method = _sync_batchnorm(cfg, method)
        elif dist.rank() == 0:  # torch's SyncBatchNorm (and DDP with it) is GPU-only
            print("scale.sync_bn=true ignored on CPU workers: SyncBatchNorm needs GPUs", file=sys.stderr)
    method = method.to(rt.device)
    if cfg.model.channels_last and rt.device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    return method, build_optimizer(cfg, method.param_groups())
