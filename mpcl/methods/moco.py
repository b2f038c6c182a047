"""MoCo v2 (He et al. 2020; Chen et al. 2020): a momentum key encoder and a queue of keys.

The queue (normalised keys, a pointer) and the key encoder are a buffer module and a
submodule, so both travel in checkpoints. Keys are gathered across workers before they are
enqueued, so every worker's queue holds the same keys. Under several workers the key
encoder sees a batch shuffled across workers (shuffle BN); on one worker there is nothing to
shuffle with, and the key encoder's BN uses the query batch's statistics.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mpcl import distributed as dist
from mpcl.config import knob
from mpcl.data.batch import Batch
from mpcl.losses import infonce_queue
from mpcl.methods.base import Method, SSLOutput, TemperatureParams
from mpcl.methods.registry import register


@dataclass
class MomentumQueueParams(TemperatureParams):
    """The knobs of a momentum key encoder and a queue of keys (moco, mcl)."""

    momentum: float = knob(0.99, ge=0.0, le=1.0)     # EMA of the key encoder
    # constant, or cosine: towards 1 over training (BYOL-style)
    momentum_schedule: str = knob("constant", choices=("constant", "cosine"))
    queue_size: int = knob(4096, ge=1)   # rounded down to a multiple of the keys enqueued per step
    mlp: bool = True                     # MLP projection head (MoCo v2) or linear (v1)


@dataclass
class MoCoParams(MomentumQueueParams):
    symmetric: bool = False              # both views as queries, mean of the two losses


def moco_head(in_dim: int, hidden: int, out: int, mlp: bool) -> nn.Sequential:
    """MoCo v2's projection head Linear-ReLU-Linear (``mlp``), or v1's single Linear."""
    if mlp:
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))
    return nn.Sequential(nn.Linear(in_dim, out))


def momentum_copy(*modules: nn.Module) -> nn.Sequential:
    """A frozen deep copy of ``modules`` chained (the key encoder), initialised to them."""
    key = copy.deepcopy(nn.Sequential(*modules))
    key.requires_grad_(False)
    return key


@torch.no_grad()
def ema_(target: nn.Module, online_params: list[torch.Tensor], momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter."""
    params = list(target.parameters())
    if len(params) != len(online_params):
        raise RuntimeError("key encoder and query encoder have different parameter lists")
    torch._foreach_lerp_(params, [p.detach() for p in online_params], 1.0 - momentum)


def momentum_at(base: float, schedule: str, step: int, total_steps: int) -> float:
    """``constant``: base. ``cosine``: 1 - (1 - base) (cos(pi t / T) + 1) / 2, from base to 1."""
    if schedule == "constant":
        return base
    progress = min((step + 1) / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1) / 2


def queue_length(requested: int, keys_per_step: int) -> int:
    """``method.queue_size`` rounded down to a multiple of the keys enqueued per step (the
    global batch, twice it when symmetric), and at least one step's keys."""
    return max(requested // keys_per_step, 1) * keys_per_step


class KeyQueue(nn.Module):
    """A ring buffer of L2-normalised keys, oldest overwritten first. Any number of keys may
    be pushed (writes wrap around the end); with more keys than slots the newest are kept."""

    consistent_across_workers = True   # pushed keys are gathered: DDP must not broadcast it

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        n = keys.shape[0]
        kept = keys.detach().to(self.keys.dtype)[-self.size:]   # as if written one by one
        start = self.ptr + (n - kept.shape[0])
        slots = (start + torch.arange(kept.shape[0], device=self.keys.device)) % self.size
        self.keys[slots] = kept
        self.ptr.copy_((self.ptr + n) % self.size)

    def snapshot(self) -> torch.Tensor:
        """A copy to compute logits with (the queue itself changes after the forward pass)."""
        return self.keys.clone()


@torch.no_grad()
def shuffled_keys(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Normalised ``encoder(x)``; under several workers ``x`` is shuffled across workers
    first and the keys unshuffled after, so BN statistics do not leak the positive (MoCo)."""
    if not dist.is_distributed():
        return F.normalize(encoder(x).float(), dim=1)
    x_all = dist.gather(x)
    world, rank = dist.world_size(), dist.rank()
    perm = dist.broadcast(torch.randperm(x_all.shape[0], device=x.device))
    k = F.normalize(encoder(x_all[perm.view(world, -1)[rank]]).float(), dim=1)
    k_all = dist.gather(k)[torch.argsort(perm)]
    return k_all.view(world, -1, k.shape[1])[rank]


class MoCo(Method):
    """InfoNCE of a query (view 1) against its key (view 2, key encoder) and the queue, T =
    ``method.temperature``; ``method.symmetric`` adds the swapped term (mean of both)."""

    Params = MoCoParams
    loss_metrics = ("train/pos_sim",)

    def __init__(self, params: MoCoParams, cfg, num_classes: int, num_samples: int):
        super().__init__(params, cfg, num_classes, num_samples)
        m, mc = cfg.model, params
        self.projector = moco_head(self.feature_dim, m.projector_hidden, m.projector_out, mc.mlp)
        self.key_encoder = momentum_copy(self.backbone, self.projector)
        per_step = cfg.data.batch_size * (2 if mc.symmetric else 1)
        self.queue = KeyQueue(queue_length(mc.queue_size, per_step), m.projector_out)

    def query_params(self) -> list[torch.Tensor]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        mc = self.params
        x1, x2 = batch.views[:2]
        n = x1.shape[0]
        queue = self.queue.snapshot()
        if mc.symmetric:
            h = self.backbone(torch.cat([x1, x2]))
            q = F.normalize(self.projector(h).float(), dim=1)
            k2, k1 = shuffled_keys(self.key_encoder, x2), shuffled_keys(self.key_encoder, x1)
            loss = 0.5 * (infonce_queue(q[:n], k2, queue, mc.temperature)
                          + infonce_queue(q[n:], k1, queue, mc.temperature))
            keys, q1, k = torch.cat([k2, k1]), q[:n], k2
        else:
            h = self.backbone(x1)
            q1 = F.normalize(self.projector(h).float(), dim=1)
            k = shuffled_keys(self.key_encoder, x2)
            loss = infonce_queue(q1, k, queue, mc.temperature)
            keys = k
        self.queue.push(dist.gather(keys))
        pos_sim = (q1.detach() * k).sum(1).mean()
        return SSLOutput(loss, h, {"train/pos_sim": pos_sim})

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        mc = self.params
        ema_(self.key_encoder, self.query_params(), momentum_at(mc.momentum, mc.momentum_schedule, step, total_steps))


register("moco", MoCo)
