"""Fine-tuning (``run.py eval --finetune``): a trained encoder and a new linear head trained end
to end on a labelled dataset's training split, then measured on its validation split.

The recipe is the usual transfer fine-tuning one (Kornblith et al. 2019, "Do Better ImageNet
Models Transfer Better?", which SimCLR's transfer experiments follow: SGD with Nesterov momentum,
random-resized-crop and flip as the only augmentation), shortened to a few epochs with fixed
learning rates instead of tuned ones:

- SGD, momentum 0.9, Nesterov; a cosine decay to 0 over every step;
- learning rate ``HEAD_LR`` x batch / 256 on the new head and the 10x lower ``ENCODER_LR`` x
  batch / 256 on the encoder, so that a few large steps do not wash out what it learnt;
- weight decay ``WEIGHT_DECAY``, none on norms, biases and the method's other ``no_decay_names``;
- augmentation: the dataset's random resized crop (scale ``data.crop_scale_min``..1) and
  horizontal flip, without the colour ops of self-supervised training; batch ``data.batch_size``;
- BatchNorm in training mode (its statistics adapt to the new data).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from mpcl.config import Config
from mpcl.data.batch import EvalBatches
from mpcl.data.loaders import build_loaders
from mpcl.engine.runtime import Runtime
from mpcl.methods import Method

HEAD_LR = 0.1        # per 256 samples of batch
ENCODER_LR = 0.01    # per 256 samples of batch
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


def supervised_data(cfg: Config) -> Config:
    """``cfg`` with the data section of supervised training: the labelled training split, random
    resized crop and flip only, one full-size view per sample, plain shuffling."""
    data = dataclasses.replace(cfg.data, train_split="train", jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                               solarize_prob=0.0, num_small_crops=0, min_per_class=0)
    return dataclasses.replace(cfg, data=data)


def param_groups(method: Method, cfg: Config, head: nn.Linear) -> list[dict]:
    """The encoder's and the head's parameters with the recipe's learning rates and weight decay."""
    scale = cfg.data.batch_size / 256
    prefix = method.encoder_prefix(cfg.method)
    no_decay = {n[len(prefix):] for n in method.no_decay_names() if n.startswith(prefix)}
    encoder = list(method.encoder().named_parameters())
    groups = [
        {"params": [p for n, p in encoder if n not in no_decay], "lr": ENCODER_LR * scale,
         "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in encoder if n in no_decay], "lr": ENCODER_LR * scale, "weight_decay": 0.0},
        {"params": [head.weight], "lr": HEAD_LR * scale, "weight_decay": WEIGHT_DECAY},
        {"params": [head.bias], "lr": HEAD_LR * scale, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def finetune(method: Method, cfg: Config, rt: Runtime, val: EvalBatches, num_classes: int,
             epochs: int) -> dict[str, float | list[float]]:
    """Trains ``method``'s encoder (in place) and a new head for ``epochs`` epochs on ``cfg``'s
    training split; returns the validation top-1 (%) on ``val`` and each epoch's mean training loss."""
    train = build_loaders(supervised_data(cfg), 0, 1, rt.device).train
    encoder = method.encoder()
    for p in encoder.parameters():
        p.requires_grad_(True)
    torch.manual_seed(cfg.train.seed)
    head = nn.Linear(method.feature_dim, num_classes).to(rt.device)
    model = nn.Sequential(encoder, head)
    opt = torch.optim.SGD(param_groups(method, cfg, head), momentum=MOMENTUM, nesterov=True)
    total = max(epochs * len(train), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    losses = []
    model.train()
    for epoch in range(epochs):
        train.set_epoch(epoch)
        summed, steps = torch.zeros((), device=rt.device), 0
        for batch in train:
            with rt.autocast():
                logits = model(batch.views[0])
            loss = F.cross_entropy(logits.float(), batch.label)
            opt.zero_grad(set_to_none=True)
            if rt.scaler is not None:
                rt.scaler.scale(loss).backward()
                rt.scaler.step(opt)
                rt.scaler.update()
            else:
                loss.backward()
                opt.step()
            sched.step()
            summed += loss.detach()
            steps += 1
        losses.append((summed / max(steps, 1)).item())
    return {"finetune_top1": top1(model, val, rt), "finetune_train_loss": losses}


@torch.no_grad()
def top1(model: nn.Module, loader: EvalBatches, rt: Runtime) -> float:
    """Top-1 (%) of ``model``'s logits over ``loader``, in eval mode."""
    model.eval()
    correct, seen = 0, 0
    for x, y in loader:
        with rt.autocast():
            correct += (model(x).argmax(1) == y).sum().item()
        seen += len(y)
    return 100.0 * correct / max(seen, 1)
