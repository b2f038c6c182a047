"""SimCLR (NT-Xent), SimCLR-Attn (graph attention over positive pairs), SimCLR-Attn-Multi
(mpcl's own variant: graph attention and multi-stage aggregation of the positive) and SupCon.

With multi-crop (``data.num_small_crops``) every crop is an anchor and the positives of an
anchor are the other crops of the same sample (equal dataset index), in the SupCon "L_out"
form; with two views this is exactly NT-Xent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpcl import distributed as dist
from mpcl.data.batch import Batch
from mpcl.losses import (attention_weighted_nt_xent, attention_weights, contrastive_terms, mixed_positive_terms,
                         multi_positive_cosine, multi_positive_terms, pair_indices)
from mpcl.config import knob
from mpcl.methods.bank import BankParams, SnapshotBank
from mpcl.methods.base import Method, SSLOutput, TemperatureParams
from mpcl.methods.registry import register
from mpcl.models import projector


@dataclass
class AttentionParams(TemperatureParams):
    """The graph-attention knobs (simclr_attn, simclr_attn_multi)."""

    attention_weight: float = knob(1.0, ge=0.0, le=1.0)    # a in ((1 - a) + a * w_i): 0 = SimCLR
    attention_temperature: float = knob(1.0, gt=0.0)       # softmax temperature of the weights w
    # loss: each anchor's whole InfoNCE term (the released form); alignment: only its positive logit
    attention_target: str = knob("loss", choices=("loss", "alignment"))


@dataclass
class AttentionBankParams(BankParams, AttentionParams):
    """simclr_attn_multi: graph attention plus the memory bank's positive mix."""


class SimCLR(Method):
    Params = TemperatureParams
    supports_multi_crop = True
    multi_positive = False  # True: always the multi-positive path (SupCon)

    def __init__(self, params: TemperatureParams, cfg, num_classes: int, num_samples: int):
        super().__init__(params, cfg, num_classes, num_samples)
        m = cfg.model
        self.projector = projector("simclr", self.feature_dim, m.projector_hidden, m.projector_out)

    def encode_views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features h and normalised projections z of [view1; view2] in one pass
        (then of the small crops, one more backbone pass, when there are any)."""
        h = self.backbone(torch.cat(batch.views[:2]))
        if len(batch.views) > 2:
            h = torch.cat([h, self.backbone(torch.cat(batch.views[2:]))])
        z = F.normalize(self.projector(h).float(), dim=1)
        return h, z

    def positive_ids(self, batch: Batch) -> torch.Tensor:
        """What makes two rows positives (multi-positive path): the dataset index."""
        return batch.index

    def contrast(self, z: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor (pos, lse) of the local anchors against the keys of every worker; with
        more than two views (or ``multi_positive``) pos is the mean over the anchor's positives."""
        n_views = len(batch.views)
        if n_views == 2 and not self.multi_positive:
            n = z.shape[0] // 2
            self_idx, pos_idx = pair_indices(n, dist.rank(), z.device)
            return contrastive_terms(z, dist.gather_with_grad(z), self_idx, pos_idx, self.params.temperature)
        ids = self.positive_ids(batch).repeat(n_views)
        self_idx = dist.rank() * z.shape[0] + torch.arange(z.shape[0], device=z.device)
        pos, lse, _ = multi_positive_terms(z, dist.gather_with_grad(z), ids, dist.gather(ids), self_idx,
                                           self.params.temperature)
        return pos, lse

    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        h, z = self.encode_views(batch)
        pos, lse = self.contrast(z, batch)
        return SSLOutput((lse - pos).mean(), h[:2 * batch.index.shape[0]])


class SimCLRAttn(SimCLR):
    """Graph attention (the released GRAPH-ATTENTION loss): each anchor's whole InfoNCE term is
    weighted by c_i = (1 - a) + a * w_i and the sum divided by the sum of the c_i over the global
    batch; w is a softmax over every anchor of the global batch of cos(h_i, h_p(i)) /
    ``attention_temperature``, scaled to average 1, computed on the gathered (detached) backbone
    features, so weights and logits cover the same anchors. ``method.attention_target=alignment``
    weights only the positive logit instead (a variant the paper did not run).

    Multi-crop: every crop is an anchor with its multi-positive InfoNCE term; its w_i is the
    softmax over all crops of the global batch of the mean cosine to its positives, scaled to
    average 1 over all crops (with two views exactly the two-view weights)."""

    Params = AttentionParams
    loss_metrics = ("train/attn_weight_max", "train/attn_weight_min")

    def infonce_terms(self, z: torch.Tensor, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor (pos, lse) that the attention weights apply to."""
        return self.contrast(z, batch)

    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        m = self.params
        h, z = self.encode_views(batch)
        pos, lse = self.infonce_terms(z, batch, epoch)
        h_all = dist.gather(h.detach())
        n_local = h.shape[0]
        if len(batch.views) == 2:
            world = h_all.shape[0] // n_local
            # positive of every global anchor: swap the two view halves inside each worker's block
            blocks = h_all.view(world, 2, -1)
            h_pos = blocks.flip(1).reshape_as(h_all)
            w_all = attention_weights(h_all, h_pos, m.attention_temperature)
        else:  # multi-crop: the mean cosine to the anchor's positives (= cos(h_i, h_p(i)) for two views)
            cos = multi_positive_cosine(h_all, dist.gather(batch.index.repeat(len(batch.views))))
            w_all = torch.softmax(cos / m.attention_temperature, dim=0) * cos.shape[0]
        w_all = w_all.to(pos.dtype)
        w = w_all[dist.rank() * n_local:(dist.rank() + 1) * n_local]
        loss = attention_weighted_nt_xent(pos, lse, w, m.attention_weight, m.attention_target, w_all.mean())
        return SSLOutput(loss, h[:2 * batch.index.shape[0]],
                         {"train/attn_weight_max": w.max(), "train/attn_weight_min": w.min()})


class SimCLRAttnMulti(SimCLRAttn):
    """SimCLR with the card's three knobs: the temperature T, the graph-attention weight a
    (SimCLR-Attn, the released form) and the memory-bank mix b (multi-stage aggregation, as
    SimSiam-Multi mixes its target). mpcl's own combination; the paper ran the two techniques
    on different methods.

    The bank holds, per sample, the detached normalised projection z2 of view 2 as last
    written (gathered over workers), read from the snapshot taken at the end of the previous
    epoch. Once mixing is on (epoch > ``bank_warmup_epochs``, the SimSiam-Multi schedule) the
    positive key of anchor i (either view of sample s) is
    k_i = normalize((1 - b) z_p(i) + b sg(bank[s])) in the numerator and the denominator of its
    InfoNCE term (``mixed_positive_terms``); the negatives and the attention weights (from
    backbone features) are SimCLR-Attn's. A sample the bank has never seen keeps k_i = z_p(i).
    With b = 0 the step is SimCLR-Attn's (and at a = 0 too, SimCLR's) bit for bit. Two views
    only (no multi-crop)."""

    Params = AttentionBankParams
    supports_multi_crop = False

    def __init__(self, params: AttentionBankParams, cfg, num_classes: int, num_samples: int):
        super().__init__(params, cfg, num_classes, num_samples)
        self.bank = SnapshotBank.of(params, num_samples, cfg.model.projector_out)

    def bank_active(self, epoch: int) -> bool:
        return self.params.bank_mixes(epoch)

    def infonce_terms(self, z: torch.Tensor, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.params
        if m.bank_mix == 0:  # never read: neither written (no gather)
            return self.contrast(z, batch)
        n = batch.index.shape[0]
        self.bank.write(dist.gather(batch.index), dist.gather(z[n:].detach()))
        if not self.bank_active(epoch):
            return self.contrast(z, batch)
        values, valid = self.bank.read(batch.index)
        self_idx, pos_idx = pair_indices(n, dist.rank(), z.device)
        return mixed_positive_terms(z, dist.gather_with_grad(z), self_idx, pos_idx, values.repeat(2, 1),
                                    m.bank_mix, m.temperature, valid.repeat(2))

    def on_epoch_end(self, epoch: int) -> None:
        self.bank.end_epoch(epoch)


class SupCon(SimCLR):
    """Supervised contrastive learning (Khosla et al. 2020, "L_out"): every sample of the
    gathered batch with the anchor's label is a positive (the anchor's own row excluded),
    loss = -mean_i mean_{p in P(i)} log softmax_i(p). Uses the labels the loader provides."""

    multi_positive = True

    @classmethod
    def label_use(cls, params) -> str:
        return "its positives are the samples of the anchor's class"

    def positive_ids(self, batch: Batch) -> torch.Tensor:
        return batch.label


register("simclr", SimCLR)
register("simclr_attn", SimCLRAttn)
register("simclr_attn_multi", SimCLRAttnMulti)
register("supcon", SupCon)
