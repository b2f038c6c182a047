"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' embeddings over
the global batch pushed towards the identity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpcl import distributed as dist
from mpcl.config import MethodParams, knob
from mpcl.data.batch import Batch
from mpcl.losses import barlow_twins_loss
from mpcl.methods.base import Method, SSLOutput
from mpcl.methods.registry import register
from mpcl.models import mlp


@dataclass
class BarlowParams(MethodParams):
    barlow_lambda: float = knob(5e-3, ge=0.0)   # weight of the off-diagonal terms (alias: method.lambda)
    scale_loss: float = knob(1.0, gt=0.0)       # multiplies the whole loss


class BarlowTwins(Method):
    """Projector in-h-h-out (Linear-BN-ReLU twice, then a Linear without bias: 2048-2048-2048
    in the CIFAR recipes, 8192 on ImageNet); the embeddings are standardised over the gathered
    batch (BN without affine) inside the loss; loss x ``method.scale_loss``."""

    Params = BarlowParams

    def __init__(self, params: BarlowParams, cfg, num_classes: int, num_samples: int):
        super().__init__(params, cfg, num_classes, num_samples)
        m = cfg.model
        self.projector = mlp([self.feature_dim, m.projector_hidden, m.projector_hidden, m.projector_out], bias=False)

    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        mc = self.params
        n = batch.index.shape[0]
        h = self.backbone(torch.cat(batch.views[:2]))
        z = self.projector(h).float()
        z1, z2 = dist.gather_with_grad(z[:n]), dist.gather_with_grad(z[n:])
        loss = mc.scale_loss * barlow_twins_loss(z1, z2, mc.barlow_lambda)
        return SSLOutput(loss, h)


register("barlow_twins", BarlowTwins)
