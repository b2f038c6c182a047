"""Mutual Contrastive Learning (Yang et al., AAAI 2022): N networks that learn from each
other's contrastive distributions.

``method.mode=unsupervised`` (the reference's ``main_moco_mcl.py``): every network is a MoCo
(query encoder, momentum key encoder, queue); the loss is
alpha VCL + beta ICL + gamma soft-VCL + lam soft-ICL (``mpcl.losses.mcl``; all four weights 1
is the reference's unweighted sum). ``method.mlp`` really puts the MLP head on every query
and key encoder (the reference's switch only re-registered it under an unused name).

``method.mode=supervised`` (the reference's ``main_cifar.py``, their CIFAR-100 table): each
network has a classifier and an embedding head d-``embed_dim``-``embed_dim`` (L2-normalised)
on one view; loss = sum_i CE_i (+ logit distillation towards the detached mean logits with
``method.logit_distill``) + alpha VCL + gamma soft-VCL + beta ICL + lam soft-ICL, with
same-label samples as positives (``data.min_per_class=2`` puts two of each class in a batch).

kNN, the online probe and ``forward`` use network ``method.eval_network``;
``method.report_networks`` adds every network's kNN top-1, and the supervised form reports
every network's classifier top-1 (``val/net{i}_top1``) and the ensemble's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpcl import distributed as dist
from mpcl import metrics as ev
from mpcl.data.batch import Batch
from mpcl.losses import mcl_queue_terms, mcl_supervised_terms, mcl_weighted, soft_kl
from mpcl.methods.base import Method, SSLOutput
from mpcl.methods.moco import KeyQueue, ema_, momentum_at, momentum_copy, moco_head, queue_length, shuffled_keys
from mpcl.models import build_backbone


class MCL(Method):
    def __init__(self, cfg, num_classes: int, num_samples: int):
        super().__init__(cfg, num_classes, num_samples)
        m, mc = cfg.model, cfg.method
        self.supervised = mc.mode == "supervised"
        self.num_classes = num_classes
        self.more_backbones = nn.ModuleList()
        if self.supervised:
            self.classifiers, self.embedders = nn.ModuleList(), nn.ModuleList()
        else:
            self.projectors, self.key_encoders, self.queues = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(mc.num_networks):
            if i:
                self.more_backbones.append(build_backbone(m.backbone, m.cifar_stem, m.zero_init_residual)[0])
            backbone = self.backbones()[i]
            if self.supervised:
                self.classifiers.append(nn.Linear(self.feature_dim, num_classes))
                self.embedders.append(nn.Sequential(nn.Linear(self.feature_dim, mc.embed_dim), nn.ReLU(inplace=True),
                                                    nn.Linear(mc.embed_dim, mc.embed_dim)))
            else:
                self.projectors.append(moco_head(self.feature_dim, m.projector_hidden, m.projector_out, mc.mlp))
                self.key_encoders.append(momentum_copy(backbone, self.projectors[i]))
        if not self.supervised:
            size = queue_length(mc.queue_size, cfg.data.batch_size)
            for _ in range(mc.num_networks):
                self.queues.append(KeyQueue(size, m.projector_out))

    @classmethod
    def metric_names(cls, cfg) -> tuple[str, ...]:
        mc = cfg.method
        names = [*super().metric_names(cfg), "train/vcl", "train/icl", "train/soft_vcl", "train/soft_icl"]
        nets = range(mc.num_networks)
        if mc.mode == "supervised":
            names += ["train/ce", "train/logit_kd", *(f"train/net{i}_top1" for i in nets),
                      *(f"val/net{i}_top1" for i in nets), "val/ensemble_top1"]
        if mc.report_networks:
            names += [f"val/knn_top1_net{i}" for i in nets]
        return tuple(names)

    def backbones(self) -> list[nn.Module]:
        return [self.backbone, *self.more_backbones]

    # -- evaluation -------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbones()[self.cfg.method.eval_network](images)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        e = self.cfg.method.eval_network
        return (self.embedders if self.supervised else self.projectors)[e](features)

    def extra_metrics(self, loaders, autocast) -> dict[str, float]:
        if not (self.supervised or self.cfg.method.report_networks):
            return {}
        t = self.cfg.train
        out: dict[str, float] = {}
        ensemble = None
        for i, backbone in enumerate(self.backbones()):
            val_f, val_y = ev.extract(backbone, loaders.val, autocast)
            if self.supervised:
                logits = self.classifiers[i](val_f)
                out[f"val/net{i}_top1"] = 100.0 * (logits.argmax(1) == val_y).float().mean().item()
                ensemble = logits if ensemble is None else ensemble + logits
            if self.cfg.method.report_networks:
                train_f, train_y = ev.extract(backbone, loaders.train_eval, autocast)
                out[f"val/knn_top1_net{i}"] = ev.knn_top1(train_f, train_y, val_f, val_y, self.num_classes,
                                                          t.knn_k, t.knn_temperature)
        if ensemble is not None:
            out["val/ensemble_top1"] = 100.0 * (ensemble.argmax(1) == val_y).float().mean().item()
        return out

    # -- training ---------------------------------------------------------------------------
    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        return self._supervised(batch) if self.supervised else self._unsupervised(batch)

    def _unsupervised(self, batch: Batch) -> SSLOutput:
        mc = self.cfg.method
        x1, x2 = batch.views[:2]
        hs, qs, ks = [], [], []
        for i, backbone in enumerate(self.backbones()):
            hs.append(backbone(x1))
            qs.append(F.normalize(self.projectors[i](hs[i]).float(), dim=1))
            ks.append(shuffled_keys(self.key_encoders[i], x2))
        queues = [q.snapshot() for q in self.queues]
        terms = mcl_queue_terms(qs, ks, queues, mc.temperature, mc.kd_temperature)
        loss = mcl_weighted(terms, mc.alpha, mc.beta, mc.gamma, mc.lam)
        for queue, k in zip(self.queues, ks):
            queue.push(dist.gather(k))
        metrics = {f"train/{k}": terms[k].detach() for k in ("vcl", "icl", "soft_vcl", "soft_icl")}
        return SSLOutput(loss, hs[mc.eval_network], metrics)

    def _supervised(self, batch: Batch) -> SSLOutput:
        mc = self.cfg.method
        x, y = batch.views[0], batch.label
        hs = [backbone(x) for backbone in self.backbones()]
        logits = [c(h).float() for c, h in zip(self.classifiers, hs)]
        embs = [F.normalize(e(h).float(), dim=1) for e, h in zip(self.embedders, hs)]
        ce = sum(F.cross_entropy(lg, y) for lg in logits)
        kd = ce.new_zeros(())
        if mc.logit_distill:
            mean = torch.stack(logits).mean(0).detach()
            kd = sum(soft_kl(lg, mean, mc.kd_temperature) for lg in logits)
        keys = [dist.gather_with_grad(e) for e in embs]
        self_idx = dist.rank() * x.shape[0] + torch.arange(x.shape[0], device=x.device)
        terms = mcl_supervised_terms(embs, keys, y, dist.gather(y), self_idx, mc.temperature, mc.kd_temperature)
        loss = ce + kd + mcl_weighted(terms, mc.alpha, mc.beta, mc.gamma, mc.lam)
        metrics = {f"train/{k}": terms[k].detach() for k in ("vcl", "icl", "soft_vcl", "soft_icl")}
        metrics["train/ce"] = ce.detach()
        metrics["train/logit_kd"] = kd.detach()
        for i, lg in enumerate(logits):
            metrics[f"train/net{i}_top1"] = (lg.detach().argmax(1) == y).float().mean() * 100
        return SSLOutput(loss, hs[mc.eval_network], metrics)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        if self.supervised:
            return
        mc = self.cfg.method
        m = momentum_at(mc.momentum, mc.momentum_schedule, step, total_steps)
        for i, backbone in enumerate(self.backbones()):
            ema_(self.key_encoders[i], [*backbone.parameters(), *self.projectors[i].parameters()], m)
