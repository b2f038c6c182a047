"""SimSiam and SimSiam-Multi (multi-stage graph aggregation through a memory bank)."""

from __future__ import annotations

import torch

from mpcl import distributed as dist
from mpcl.data.batch import Batch
from mpcl.losses import bank_target, symmetric_negative_cosine
from mpcl.config import MethodParams
from mpcl.methods.bank import BankParams, SnapshotBank
from mpcl.methods.base import Method, SSLOutput
from mpcl.methods.registry import register
from mpcl.models import predictor, projector


class SimSiam(Method):
    """Negative cosine between each view's prediction and the other view's stop-gradient
    projection (no knobs of its own; ``optim.predictor_fixed_lr`` keeps the predictor's lr fixed)."""

    Params = MethodParams
    loss_metrics = ("train/z_std",)

    def __init__(self, params: MethodParams, cfg, num_classes: int, num_samples: int):
        super().__init__(params, cfg, num_classes, num_samples)
        m = cfg.model
        self.projector = projector("simsiam", self.feature_dim, m.projector_hidden, m.projector_out)
        self.predictor = predictor(m.projector_out, m.predictor_hidden)

    def fixed_lr_modules(self) -> list[str]:
        return ["predictor"] if self.optim.predictor_fixed_lr else []

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
    """Targets (1 - b) * z_other + b * bank[index], the bank holding view 2's projections z2
    as last written: reads see the snapshot taken at the end of the previous epoch (a sample
    skipped in an epoch keeps its older entry), as in the released code.

    Schedule, as released (plain target while its epoch counter is <= 50): epochs
    0..``bank_warmup_epochs`` (0-based) train on the plain target, the first mixed epoch is
    ``bank_warmup_epochs + 1``. A sample the bank has never seen keeps the plain target (the
    released code mixed in a random vector there).
    """

    Params = BankParams

    def __init__(self, params: BankParams, cfg, num_classes: int, num_samples: int):
        super().__init__(params, cfg, num_classes, num_samples)
        self.bank = SnapshotBank.of(params, num_samples, cfg.model.projector_out)

    def bank_active(self, epoch: int) -> bool:
        return self.params.bank_mixes(epoch)

    def targets(self, batch: Batch, z1: torch.Tensor, z2: torch.Tensor, epoch: int):
        self.bank.write(dist.gather(batch.index), dist.gather(z2.detach()))
        if not self.bank_active(epoch):
            return z2, z1
        values, valid = self.bank.read(batch.index)
        b = self.params.bank_mix
        return bank_target(z2, values, b, valid), bank_target(z1, values, b, valid)

    def on_epoch_end(self, epoch: int) -> None:
        self.bank.end_epoch(epoch)


register("simsiam", SimSiam)
register("simsiam_multi", SimSiamMulti)
