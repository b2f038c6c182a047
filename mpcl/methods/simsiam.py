"""SimSiam and SimSiam-Multi (multi-stage graph aggregation through a memory bank)."""

from __future__ import annotations

import torch

from mpcl import distributed as dist
from mpcl.data.batch import Batch
from mpcl.losses import bank_target, symmetric_negative_cosine
from mpcl.methods.bank import SnapshotBank
from mpcl.methods.base import Method, SSLOutput
from mpcl.models import predictor, projector


class SimSiam(Method):
    loss_metrics = ("train/z_std",)

    def __init__(self, cfg, num_classes: int, num_samples: int):
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.model
        self.projector = projector("simsiam", self.feature_dim, m.projector_hidden, m.projector_out)
        self.predictor = predictor(m.projector_out, m.predictor_hidden)

    def fixed_lr_modules(self) -> list[str]:
        return ["predictor"] if self.cfg.optim.predictor_fixed_lr else []

    def encode_views(self, batch: Batch):
        x = torch.cat(batch.views[:2])
        h = self.backbone(x)
        z = self.projector(h)
        p = self.predictor(z)
        n = batch.index.shape[0]
        return h, z[:n], z[n:], p[:n], p[n:]

    def targets(self, batch: Batch, z1: torch.Tensor, z2: torch.Tensor, epoch: int):
        return z2, z1

    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        h, z1, z2, p1, p2 = self.encode_views(batch)
        t1, t2 = self.targets(batch, z1, z2, epoch)
        loss = symmetric_negative_cosine(p1.float(), p2.float(), t1.float(), t2.float())
        z_std = torch.nn.functional.normalize(z1.detach().float(), dim=1).std(0).mean()
        return SSLOutput(loss, h, {"train/z_std": z_std})


class SimSiamMulti(SimSiam):
    """Targets (1 - b) * z_other + b * bank[index], the bank holding last epoch's z2.

    The bank mixes in from epoch ``max(bank_warmup_epochs, 1)`` on (at epoch 0 there is no
    previous epoch to read); samples the previous epoch did not visit keep the plain target.
    """

    def __init__(self, cfg, num_classes: int, num_samples: int):
        super().__init__(cfg, num_classes, num_samples)
        dtype = getattr(torch, cfg.method.bank_dtype)
        self.bank = SnapshotBank(num_samples, cfg.model.projector_out, dtype)

    def bank_active(self, epoch: int) -> bool:
        return epoch >= max(self.cfg.method.bank_warmup_epochs, 1)

    def targets(self, batch: Batch, z1: torch.Tensor, z2: torch.Tensor, epoch: int):
        self.bank.write(dist.gather(batch.index), dist.gather(z2.detach()))
        if not self.bank_active(epoch):
            return z2, z1
        values, valid = self.bank.read(batch.index)
        b = self.cfg.method.bank_mix
        return bank_target(z2, values, b, valid), bank_target(z1, values, b, valid)

    def on_epoch_end(self, epoch: int) -> None:
        self.bank.end_epoch(epoch)
