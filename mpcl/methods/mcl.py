"""Mutual Contrastive Learning (Yang et al., AAAI 2022): N networks that learn from each
other's contrastive distributions.

``method.mode`` picks one of two models (one registered name, ``mcl``, with one set of knobs).

``method.mode=unsupervised`` (``MCLMoCo``; the reference's ``main_moco_mcl.py``): every network is a MoCo
(query encoder, momentum key encoder, queue); the loss is
alpha VCL + beta ICL + gamma soft-VCL + lam soft-ICL (``mpcl.losses.mcl``; all four weights 1
is the reference's unweighted sum). ``method.mlp`` really puts the MLP head on every query
and key encoder (the reference's switch only re-registered it under an unused name).

``method.mode=supervised`` (``MCLSupervised``; the reference's ``main_cifar.py``, their CIFAR-100 table): each
network has a classifier and an embedding head d-``embed_dim``-``embed_dim`` (L2-normalised)
on one view; loss = sum_i CE_i (+ logit distillation towards the detached mean logits with
``method.logit_distill``) + alpha VCL + gamma soft-VCL + beta ICL + lam soft-ICL, with
same-label samples as positives (``data.min_per_class=2`` puts two of each class in a batch).

kNN, the online probe and ``forward`` use network ``method.eval_network``;
``method.report_networks`` adds every network's kNN top-1, and the supervised form reports
every network's classifier top-1 (``val/net{i}_top1``) and the ensemble's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mpcl import distributed as dist
from mpcl import metrics as ev
from mpcl.config import ConfigError, knob
from mpcl.data.batch import Batch
from mpcl.losses import mcl_queue_terms, mcl_supervised_terms, mcl_weighted, soft_kl
from mpcl.methods.base import Method, SSLOutput, build_encoder
from mpcl.methods.moco import (KeyQueue, MomentumQueueParams, ema_, momentum_at, momentum_copy, moco_head,
                               queue_length, shuffled_keys)
from mpcl.methods.registry import register

TERMS = ("vcl", "icl", "soft_vcl", "soft_icl")


@dataclass
class MCLParams(MomentumQueueParams):
    """The momentum / queue knobs apply to the unsupervised form; ``logit_distill`` and
    ``embed_dim`` to the supervised one."""

    mode: str = knob("unsupervised", choices=("unsupervised", "supervised"))
    num_networks: int = knob(2, ge=1)
    alpha: float = knob(0.1, ge=0.0)          # weight of VCL (vanilla contrastive, within a network)
    beta: float = knob(0.1, ge=0.0)           # weight of ICL (inter-network contrastive)
    gamma: float = knob(1.0, ge=0.0)          # weight of soft VCL (KL between networks' VCL distributions)
    lam: float = knob(1.0, ge=0.0)            # weight of soft ICL (KL between the ICL distribution pairs)
    kd_temperature: float = knob(3.0, gt=0.0)  # T of the soft (KL) terms and of logit distillation
    logit_distill: bool = False               # supervised: KL of each network towards the mean logits
    embed_dim: int = knob(128, ge=1)          # supervised: embedding head d-embed_dim-embed_dim
    eval_network: int = knob(0, ge=0)         # the network kNN / probe / checkpoints' encoder use
    report_networks: bool = False             # also report kNN top-1 of every network

    def check(self, cfg) -> None:
        if self.eval_network >= self.num_networks:
            raise ConfigError(f"method.eval_network={self.eval_network}: must be < "
                              f"method.num_networks={self.num_networks}")


class MCL(Method):
    """What both forms share: ``num_networks`` backbones, the network that evaluation uses,
    the weighted loss terms and the per-network validation metrics."""

    Params = MCLParams
    classifies = False    # True: every network has a classifier, reported on the validation split

    @classmethod
    def label_use(cls, params: MCLParams) -> str:
        return "method.mode=supervised trains on the classes" if params.mode == "supervised" else ""

    @classmethod
    def create(cls, params: MCLParams, cfg, num_classes: int, num_samples: int) -> Method:
        variant = MCLSupervised if params.mode == "supervised" else MCLMoCo
        return variant(params, cfg, num_classes, num_samples)

    @classmethod
    def metric_names(cls, cfg) -> tuple[str, ...]:
        p = cfg.method
        names = [*super().metric_names(cfg), *(f"train/{t}" for t in TERMS)]
        nets = range(p.num_networks)
        if p.mode == "supervised":
            names += ["train/ce", "train/logit_kd", *(f"train/net{i}_top1" for i in nets),
                      *(f"val/net{i}_top1" for i in nets), "val/ensemble_top1"]
        if p.report_networks:
            names += [f"val/knn_top1_net{i}" for i in nets]
        return tuple(names)

    def __init__(self, params: MCLParams, cfg, num_classes: int, num_samples: int):
        super().__init__(params, cfg, num_classes, num_samples)
        self.num_classes = num_classes
        self.knn_k, self.knn_temperature = cfg.train.knn_k, cfg.train.knn_temperature
        self._backbone_config = cfg
        self.more_backbones = nn.ModuleList()

    def network_backbone(self, i: int) -> nn.Module:
        """Network ``i``'s backbone, built when ``i`` is the next one (network 0: the base's)."""
        if i == len(self.more_backbones) + 1:
            self.more_backbones.append(build_encoder(self._backbone_config)[0])
        return self.backbones()[i]

    def backbones(self) -> list[nn.Module]:
        return [self.backbone, *self.more_backbones]

    def embedding_heads(self) -> nn.ModuleList:  # pragma: no cover - abstract
        raise NotImplementedError

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        p = self.params
        return mcl_weighted(terms, p.alpha, p.beta, p.gamma, p.lam)

    # -- evaluation -------------------------------------------------------------------------
    @staticmethod
    def encoder_prefix(params: MCLParams) -> str:
        i = params.eval_network
        return "backbone." if i == 0 else f"more_backbones.{i - 1}."

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbones()[self.params.eval_network](images)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.embedding_heads()[self.params.eval_network](features)

    def extra_metrics(self, loaders, autocast) -> dict[str, float]:
        report = self.params.report_networks
        if not (self.classifies or report):
            return {}
        out: dict[str, float] = {}
        ensemble = None
        for i, backbone in enumerate(self.backbones()):
            val_f, val_y = ev.extract(backbone, loaders.val, autocast)
            if self.classifies:
                logits = self.classifiers[i](val_f)
                out[f"val/net{i}_top1"] = 100.0 * (logits.argmax(1) == val_y).float().mean().item()
                ensemble = logits if ensemble is None else ensemble + logits
            if report:
                train_f, train_y = ev.extract(backbone, loaders.train_eval, autocast)
                out[f"val/knn_top1_net{i}"] = ev.knn_top1(train_f, train_y, val_f, val_y, self.num_classes,
                                                          self.knn_k, self.knn_temperature)
        if ensemble is not None:
            out["val/ensemble_top1"] = 100.0 * (ensemble.argmax(1) == val_y).float().mean().item()
        return out


class MCLMoCo(MCL):
    """``mode=unsupervised``: every network a MoCo (query encoder, momentum key encoder, queue)."""

    def __init__(self, params: MCLParams, cfg, num_classes: int, num_samples: int):
        super().__init__(params, cfg, num_classes, num_samples)
        m = cfg.model
        self.projectors, self.key_encoders, self.queues = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(params.num_networks):
            backbone = self.network_backbone(i)
            self.projectors.append(moco_head(self.feature_dim, m.projector_hidden, m.projector_out, params.mlp))
            self.key_encoders.append(momentum_copy(backbone, self.projectors[i]))
        size = queue_length(params.queue_size, cfg.data.batch_size)
        for _ in range(params.num_networks):
            self.queues.append(KeyQueue(size, m.projector_out))

    def embedding_heads(self) -> nn.ModuleList:
        return self.projectors

    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        p = self.params
        x1, x2 = batch.views[:2]
        hs, qs, ks = [], [], []
        for i, backbone in enumerate(self.backbones()):
            hs.append(backbone(x1))
            qs.append(F.normalize(self.projectors[i](hs[i]).float(), dim=1))
            ks.append(shuffled_keys(self.key_encoders[i], x2))
        queues = [q.snapshot() for q in self.queues]
        terms = mcl_queue_terms(qs, ks, queues, p.temperature, p.kd_temperature)
        loss = self.weighted(terms)
        for queue, k in zip(self.queues, ks):
            queue.push(dist.gather(k))
        metrics = {f"train/{t}": terms[t].detach() for t in TERMS}
        return SSLOutput(loss, hs[p.eval_network], metrics)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        p = self.params
        m = momentum_at(p.momentum, p.momentum_schedule, step, total_steps)
        for i, backbone in enumerate(self.backbones()):
            ema_(self.key_encoders[i], [*backbone.parameters(), *self.projectors[i].parameters()], m)


class MCLSupervised(MCL):
    """``mode=supervised``: every network a classifier and an embedding head on one view."""

    classifies = True

    def __init__(self, params: MCLParams, cfg, num_classes: int, num_samples: int):
        super().__init__(params, cfg, num_classes, num_samples)
        self.classifiers, self.embedders = nn.ModuleList(), nn.ModuleList()
        d = params.embed_dim
        for i in range(params.num_networks):
            self.network_backbone(i)
            self.classifiers.append(nn.Linear(self.feature_dim, num_classes))
            self.embedders.append(nn.Sequential(nn.Linear(self.feature_dim, d), nn.ReLU(),
                                                nn.Linear(d, d)))

    def embedding_heads(self) -> nn.ModuleList:
        return self.embedders

    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        p = self.params
        x, y = batch.views[0], batch.label
        hs = [backbone(x) for backbone in self.backbones()]
        logits = [c(h).float() for c, h in zip(self.classifiers, hs)]
        embs = [F.normalize(e(h).float(), dim=1) for e, h in zip(self.embedders, hs)]
        ce = sum(F.cross_entropy(lg, y) for lg in logits)
        kd = ce.new_zeros(())
        if p.logit_distill:
            mean = torch.stack(logits).mean(0).detach()
            kd = sum(soft_kl(lg, mean, p.kd_temperature) for lg in logits)
        keys = [dist.gather_with_grad(e) for e in embs]
        self_idx = dist.rank() * x.shape[0] + torch.arange(x.shape[0], device=x.device)
        terms = mcl_supervised_terms(embs, keys, y, dist.gather(y), self_idx, p.temperature, p.kd_temperature)
        loss = ce + kd + self.weighted(terms)
        metrics = {f"train/{t}": terms[t].detach() for t in TERMS}
        metrics["train/ce"] = ce.detach()
        metrics["train/logit_kd"] = kd.detach()
        for i, lg in enumerate(logits):
            metrics[f"train/net{i}_top1"] = (lg.detach().argmax(1) == y).float().mean() * 100
        return SSLOutput(loss, hs[p.eval_network], metrics)


register("mcl", MCL)
