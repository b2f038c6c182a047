"""Siamese Prototypical Contrastive Learning (Mo et al., BMVC 2021).

Loss = InfoNCE (SimCLR's NT-Xent on two views)
     + ``cluster_weight`` * CE(classifier(h), pseudo_label[index])      (both views)
     + ``metric_weight``  * BCE of a siamese head on |h_a - h_b|: the two views of an image are
       a positive pair, two images with different pseudo-labels a negative pair.

Every ``method.reassign`` epochs (``on_epoch_start``) the backbone features of the whole
training split (no augmentation) are put in dataset-index order, PCA-whitened, L2-normalised
and clustered by k-means into ``method.num_prototypes`` clusters; the classifier (which has
``num_prototypes`` outputs) is re-initialised. Three defects of the released code are fixed:
the classifier's width is the number of prototypes, not of classes; pseudo-labels are stored
by dataset index and read with ``batch.index``; and pairs come from pseudo-labels only (no
ground-truth label is read anywhere in the loss). Under several workers the features are
gathered, rank 0 clusters, and the assignments are broadcast to every worker.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mpcl import distributed as dist
from mpcl.data.batch import Batch
from mpcl.engine import evaluate as ev
from mpcl.losses import metric_pairs, prototype_ce, siamese_metric_loss
from mpcl.methods.base import SSLOutput
from mpcl.methods.clustering import cluster_features
from mpcl.methods.simclr import SimCLR


def dataset_order(features: torch.Tensor, indices: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Rows of ``features`` (gathered in loader order, sample ``indices[r]`` in row r) moved
    to row = dataset index."""
    if indices.shape[0] != features.shape[0] or indices.shape[0] != num_samples:
        raise RuntimeError(f"SPCL: {features.shape[0]} features for {num_samples} training samples")
    out = torch.empty_like(features)
    out[indices.to(features.device)] = features
    return out


class SPCL(SimCLR):
    supports_multi_crop = False

    def __init__(self, cfg, num_classes: int, num_samples: int):
        super().__init__(cfg, num_classes, num_samples)
        mc = cfg.method
        self.classifier = nn.Linear(self.feature_dim, mc.num_prototypes)
        hidden = cfg.model.projector_hidden
        self.metric_head = nn.Sequential(nn.Linear(self.feature_dim, hidden), nn.ReLU(inplace=True),
                                         nn.Linear(hidden, 1))
        self.register_buffer("pseudo_labels", torch.full((num_samples,), -1, dtype=torch.long))
        self.register_buffer("clustered_epoch", torch.tensor(-1, dtype=torch.long))
        self._clustered = False   # host-side copy of clustered_epoch >= 0 (no sync in the step)

    def worker_consistent_buffers(self) -> list[str]:
        return super().worker_consistent_buffers() + ["pseudo_labels", "clustered_epoch"]  # broadcast by rank 0

    # -- clustering -------------------------------------------------------------------------
    @torch.no_grad()
    def assign_prototypes(self, features: torch.Tensor, epoch: int) -> torch.Tensor:
        """Cluster dataset-ordered features on rank 0 and broadcast the assignments."""
        mc = self.cfg.method
        if dist.rank() == 0:
            labels = cluster_features(features, mc.num_prototypes, mc.pca_dim, mc.kmeans_iters,
                                      seed=self.cfg.train.seed * 100_003 + epoch)
        else:
            labels = torch.zeros(features.shape[0], dtype=torch.long, device=features.device)
        return dist.broadcast(labels.to(features.device))

    @torch.no_grad()
    def reset_classifier(self, epoch: int) -> None:
        """nn.Linear's default init, from a generator seeded by (seed, epoch): the same on every worker."""
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + epoch + 1)
        bound = 1.0 / math.sqrt(self.feature_dim)
        for p in self.classifier.parameters():
            p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))

    def on_epoch_start(self, epoch: int, loaders, autocast) -> list[nn.Parameter]:
        mc = self.cfg.method
        if epoch % mc.reassign and int(self.clustered_epoch) >= 0:   # resumed mid-interval: keep them
            self._clustered = True
            return []
        was_training = self.training
        self.eval()
        feats, _ = ev.extract(self, loaders.train_eval, autocast)
        loader = loaders.train_eval
        if hasattr(loader, "sample_indices"):
            indices = dist.gather_uneven(loader.sample_indices().to(feats.device))
        else:  # loaders whose ranks hold contiguous, rank-ordered shares (the ffcv loader)
            indices = torch.arange(feats.shape[0], device=feats.device)
        feats = dataset_order(feats, indices, self.num_samples)
        self.pseudo_labels.copy_(self.assign_prototypes(feats, epoch).to(self.pseudo_labels.device))
        self.clustered_epoch.fill_(epoch)
        self._clustered = True
        self.reset_classifier(epoch)
        self.train(was_training)
        return list(self.classifier.parameters())

    # -- training ---------------------------------------------------------------------------
    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        mc = self.cfg.method
        n = batch.index.shape[0]
        h, z = self.encode_views(batch)
        pos, lse = self.contrast(z, batch)
        nce = (lse - pos).mean()
        pseudo = self.pseudo_labels[batch.index]
        if not self._clustered:      # no clustering yet (only when called outside the engine)
            return SSLOutput(nce, h, {"train/nce": nce.detach()})
        cluster = prototype_ce(self.classifier(h).float(), pseudo.repeat(2))
        h1, h2 = h[:n], h[n:2 * n]
        partner, valid = metric_pairs(pseudo)
        pos_logit = self.metric_head((h1 - h2).abs()).float().squeeze(1)
        neg_logit = self.metric_head((h1 - h2[partner]).abs()).float().squeeze(1)
        metric = siamese_metric_loss(pos_logit, neg_logit, valid)
        loss = nce + mc.cluster_weight * cluster + mc.metric_weight * metric
        return SSLOutput(loss, h, {"train/nce": nce.detach(), "train/cluster_ce": cluster.detach(),
                                   "train/metric_bce": metric.detach()})
