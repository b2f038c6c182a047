"""The base every method builds on: backbone, online linear probe, optimizer param groups.

A method implements ``ssl_loss(batch, epoch) -> SSLOutput``; the base adds the online probe
(a linear classifier on detached backbone features, so no gradient reaches the encoder) and
returns a ``StepOutput`` whose metrics stay on the device until the engine logs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mpcl.config import Config, MethodParams, knob
from mpcl.data.batch import Batch
from mpcl.data.datasets import dataset_spec
from mpcl.models import build_backbone


# timm's names of the ViT tensors that are embeddings, not weights: no weight decay on them
VIT_NO_DECAY = frozenset({"pos_embed", "cls_token", "reg_token", "dist_token"})


def build_encoder(cfg: Config, initial_weights: bool = True) -> tuple[nn.Module, int]:
    """``cfg``'s backbone sized for its dataset's crops (timm ViTs), with ``model.weights``
    loaded unless not ``initial_weights`` (a checkpoint's weights replace them)."""
    m = cfg.model
    return build_backbone(m.backbone, m.cifar_stem, m.zero_init_residual,
                          image_size=dataset_spec(cfg.data).image_size, patch_size=m.patch_size,
                          dynamic_size=cfg.data.num_small_crops > 0, weights=m.weights if initial_weights else "")


@dataclass
class TemperatureParams(MethodParams):
    """The knob of every InfoNCE-style method."""

    temperature: float = knob(0.5, gt=0.0)   # softmax temperature of the contrastive logits


@dataclass
class SSLOutput:
    loss: torch.Tensor
    features: torch.Tensor                 # backbone features of the views, (V * n, D), for the probe
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class StepOutput:
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


class Method(nn.Module):
    """Subclasses declare their parameters (``Params``), set up their heads in ``__init__``
    from them and the other sections of the config, and implement ``ssl_loss``. A method reads
    the config in ``__init__`` only; what its steps need it keeps as attributes."""

    Params: type[MethodParams] = MethodParams
    supports_multi_crop = False   # True: ssl_loss uses every view of batch.views (data.num_small_crops)
    loss_metrics: tuple[str, ...] = ()   # the keys ssl_loss puts in SSLOutput.metrics

    @classmethod
    def metric_names(cls, cfg: Config) -> tuple[str, ...]:
        """Every key this method adds to an epoch's metrics under ``cfg``: the training
        step's (averaged over the epoch) and ``extra_metrics``'."""
        return ("train/loss", "train/probe_loss", "train/probe_top1", *cls.loss_metrics)

    @classmethod
    def label_use(cls, params: MethodParams) -> str:
        """How the loss uses the classes under ``params`` ("" when it does not): a method that
        does cannot train on unlabelled data."""
        return ""

    @classmethod
    def create(cls, params: MethodParams, cfg: Config, num_classes: int, num_samples: int) -> Method:
        """Builds the method (a family with one class per variant picks the variant here)."""
        return cls(params, cfg, num_classes, num_samples)

    def __init__(self, params: MethodParams, cfg: Config, num_classes: int, num_samples: int):
        super().__init__()
        self.params = params
        self.optim = cfg.optim
        self.num_samples = num_samples
        self.backbone, self.feature_dim = build_encoder(cfg)
        # unlabelled data: a one-output probe that is never trained keeps every state dict's layout
        self.probe = nn.Linear(self.feature_dim, max(num_classes, 1))

    # -- training -----------------------------------------------------------------------
    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def training_step(self, batch: Batch, epoch: int) -> StepOutput:
        out = self.ssl_loss(batch, epoch)
        labels = batch.label.repeat(out.features.shape[0] // batch.label.shape[0])
        logits = self.probe(out.features.detach().float())
        known = labels >= 0   # unlabelled samples (label -1) train the encoder, not the probe
        count = known.sum().clamp(min=1)
        ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        probe_loss = torch.where(known, ce, 0.0).sum() / count
        probe_top1 = ((logits.argmax(1) == labels) & known).sum() * 100.0 / count
        metrics = {
            "train/loss": out.loss.detach(),
            "train/probe_loss": probe_loss.detach(),
            "train/probe_top1": probe_top1,
            **out.metrics,
        }
        return StepOutput(out.loss + probe_loss, metrics)

    def on_epoch_end(self, epoch: int) -> None:
        """Called by the engine after the last step of ``epoch`` (memory banks swap here)."""

    def on_epoch_start(self, epoch: int, loaders, autocast) -> list[nn.Parameter]:
        """Called by the engine before the first step of ``epoch`` on every worker, with the
        loaders (``loaders.train_eval``: the training split without augmentation) and the
        autocast context. Returns the parameters it re-initialised; the engine drops their
        optimizer state (momentum). SPCL re-clusters here."""
        return []

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called by the engine right after each ``optimizer.step()``; ``step`` counts from 0
        over the whole run (momentum encoders update here)."""

    def extra_metrics(self, loaders, autocast) -> dict[str, float]:
        """More validation metrics, merged into the epoch's evaluation (e.g. per-network)."""
        return {}

    # -- evaluation ---------------------------------------------------------------------
    @staticmethod
    def encoder_prefix(params: MethodParams) -> str:
        """Where ``forward``'s encoder sits in the state dict (what export writes)."""
        return "backbone."

    def encoder(self) -> nn.Module:
        """The module ``forward`` runs: the encoder kNN, the probes, fine-tuning and export use."""
        return self.get_submodule(self.encoder_prefix(self.params).rstrip("."))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (what kNN and linear evaluation use)."""
        return self.backbone(images)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The embedding the loss sees, from backbone features (for alignment / uniformity)."""
        return self.projector(features)

    # -- optimisation -------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Groups for the optimizer. Keys beyond torch's: ``lars`` (adapt this group's lr),
        ``fixed_lr`` (not scheduled), ``name``. When ``optim.exclude_bn_bias``, ``no_decay_names``
        get no weight decay and no LARS adaptation."""
        o = self.optim
        decay, no_decay, fixed = [], [], []
        fixed_names = {f"{n}." for n in self.fixed_lr_modules()}
        excluded = self.no_decay_names() if o.exclude_bn_bias else set()
        for name, p in self.named_parameters():
            if not p.requires_grad or name.startswith("probe."):
                continue
            if any(name.startswith(f) for f in fixed_names):
                fixed.append(p)
            elif name in excluded:
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [
            {"name": "decay", "params": decay, "weight_decay": o.weight_decay, "lars": True},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lars": False},
            {"name": "fixed_lr", "params": fixed, "weight_decay": o.weight_decay, "lars": True,
             "fixed_lr": True},
            {"name": "probe", "params": list(self.probe.parameters()), "weight_decay": 0.0,
             "lars": False, "fixed_lr": True, "lr": o.probe_lr},
        ]
        return [g for g in groups if g["params"]]

    def no_decay_names(self) -> set[str]:
        """The parameters that take no weight decay, whatever the model: every tensor of ndim
        <= 1 (norm weights, biases), ViT position embeddings and class / register /
        distillation tokens, and what a submodule's ``no_weight_decay()`` names (timm's)."""
        names = {n for n, p in self.named_parameters()
                 if p.ndim <= 1 or n.rsplit(".", 1)[-1] in VIT_NO_DECAY}
        for prefix, module in self.named_modules():
            if callable(getattr(module, "no_weight_decay", None)):
                names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
        return names

    def worker_consistent_buffers(self) -> list[str]:
        """Names of the buffers every worker keeps identical by itself (memory banks and queues
        written with gathered values, broadcast pseudo-labels). DDP leaves these out of the
        rank-0 buffer broadcast it does before every forward pass: for a dataset-sized bank
        that broadcast would be hundreds of MB per step. Collected from submodules that set
        ``consistent_across_workers = True``; methods add their own buffers."""
        return [f"{name}.{buf}" if name else buf
                for name, module in self.named_modules() if getattr(module, "consistent_across_workers", False)
                for buf, _ in module.named_buffers(recurse=False)]

    def fixed_lr_modules(self) -> list[str]:
        """Names of submodules whose lr is not scheduled (SimSiam's predictor)."""
        return []
