"""SimCLR (NT-Xent) and SimCLR-Attn (graph attention over positive pairs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpcl import distributed as dist
from mpcl.data.batch import Batch
from mpcl.losses import attention_weighted_nt_xent, attention_weights, contrastive_terms, pair_indices
from mpcl.methods.base import Method, SSLOutput
from mpcl.models import projector


class SimCLR(Method):
    def __init__(self, cfg, num_classes: int, num_samples: int):
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.model
        self.projector = projector("simclr", self.feature_dim, m.projector_hidden, m.projector_out)

    def encode_views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features h and normalised projections z of [view1; view2] in one pass."""
        h = self.backbone(torch.cat(batch.views[:2]))
        z = F.normalize(self.projector(h).float(), dim=1)
        return h, z

    def contrast(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-anchor (pos, lse) of the local anchors against the keys of every worker."""
        n = z.shape[0] // 2
        self_idx, pos_idx = pair_indices(n, dist.rank(), z.device)
        return contrastive_terms(z, dist.gather_with_grad(z), self_idx, pos_idx, self.cfg.method.temperature)

    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        h, z = self.encode_views(batch)
        pos, lse = self.contrast(z)
        return SSLOutput((lse - pos).mean(), h)


class SimCLRAttn(SimCLR):
    """Each anchor's positive term is weighted by ((1 - a) + a * w_i), w the graph-attention
    weights: a softmax over every anchor of the global batch of cos(h_i, h_p(i)), computed on
    the gathered (detached) backbone features, so weights and logits cover the same anchors."""

    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        m = self.cfg.method
        h, z = self.encode_views(batch)
        pos, lse = self.contrast(z)
        h_all = dist.gather(h.detach())
        n_local = h.shape[0]
        world = h_all.shape[0] // n_local
        # positive of every global anchor: swap the two view halves inside each worker's block
        blocks = h_all.view(world, 2, n_local // 2, -1)
        h_pos = blocks.flip(1).reshape_as(h_all)
        w_all = attention_weights(h_all, h_pos, m.attention_temperature)
        w = w_all[dist.rank() * n_local:(dist.rank() + 1) * n_local]
        loss = attention_weighted_nt_xent(pos, lse, w, m.attention_weight)
        return SSLOutput(loss, h, {"train/attn_weight_max": w.max(), "train/attn_weight_min": w.min()})
