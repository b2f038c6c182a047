"""Optimizers (SGD, LARS, AdamW) and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from mpcl.config import Config


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), as in SimCLR:
    for groups with ``lars=True`` the update (gradient + weight decay) of each parameter
    tensor is scaled by ``trust * ||w|| / ||g + wd * w||``; other groups (BN, biases, the
    probe) are plain SGD."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3, eps: float = 1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"]:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    w_norm, g_norm = p.norm(), d_p.norm()
                    ok = (w_norm > 0) & (g_norm > 0)
                    trust = torch.where(ok, group["trust_coefficient"] * w_norm / (g_norm + group["eps"]),
                                        torch.ones_like(w_norm))
                    d_p = d_p * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d_p.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d_p)
                p.add_(buf, alpha=-group["lr"])
        return loss


def base_lr(cfg: Config) -> float:
    """optim.lr, scaled linearly by global batch / 256 when optim.scale_lr."""
    return cfg.optim.lr * (cfg.data.batch_size / 256 if cfg.optim.scale_lr else 1.0)


def build_optimizer(cfg: Config, param_groups: list[dict]) -> torch.optim.Optimizer:
    """SGD, LARS or AdamW over ``param_groups``; a group without its own ``lr``,
    ``weight_decay`` or ``momentum`` takes the config's (``lr`` scaled by ``base_lr``). Each
    group's ``initial_lr`` is where ``set_lr`` scales from (SGD and AdamW ignore the ``lars``
    flags). AdamW's betas are (``optim.momentum``, ``optim.beta2``); its weight decay is
    decoupled (``lr * weight_decay * w`` each step), as in the ViT recipes."""
    o, lr = cfg.optim, base_lr(cfg)
    groups = [dict(g) for g in param_groups]
    if o.name == "lars":
        opt = LARS(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay,
                   trust_coefficient=o.trust_coefficient)
    elif o.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=(o.momentum, o.beta2), weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup from 0 to 1 over ``warmup_steps``, then cosine from 1 to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Scale every scheduled group's initial lr by ``factor``; fixed-lr groups (SimSiam's predictor, the probe)
    keep theirs. Returns the scheduled lr."""
    lr = None
    for g in optimizer.param_groups:
        if not g.get("fixed_lr"):
            g["lr"] = g["initial_lr"] * factor
            lr = g["lr"] if lr is None else lr
    return float(lr or 0.0)
