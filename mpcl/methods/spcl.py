"""Siamese Prototypical Contrastive Learning (Mo et al., BMVC 2021), trained as the reference
(stoneMo/SPCL) trains it.

Each step splits the local batch into B = n // 2 disjoint pairs of images (``prototype_pairs``:
odd pair slots take two images of one prototype, even slots two of different prototypes, as
the reference's pair sampler does) and adds, at the reference's scales (``spcl_terms``):
NT-Xent over the first images + NT-Xent over their partners, ``cluster_weight`` x the sum over
the four views of CE(classifier(h), pseudo-label), and ``metric_weight`` x the six BCE terms of
the siamese head Linear(d, 1) on |h_x - h_y| (two same-image pairs with target 1, four
cross-image pairs with target "same prototype").

Every ``method.reassign`` epochs (``on_epoch_start``) the backbone features of the whole
training split (no augmentation) are put in dataset-index order, PCA-whitened, L2-normalised
and clustered by k-means into ``method.num_prototypes`` clusters; the classifier is
re-initialised (normal(0, 0.01) weights, zero bias, as released). Under several workers the
features are gathered, rank 0 clusters, and the assignments are broadcast to every worker.

Three defects of the released code are fixed, each behind a switch whose other position
reproduces the released behaviour:
``method.classifier_outputs`` prototypes | classes (released: as many outputs as classes),
``method.pseudo_label_order`` index | loader (released: the label of sample r was the cluster
of the r-th sample its with-replacement sampler drew), ``method.pair_labels`` pseudo | true
(released: pairs and their targets from the ground-truth classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mpcl import distributed as dist
from mpcl import metrics as ev
from mpcl.config import ConfigError, knob
from mpcl.data.batch import Batch
from mpcl.losses import prototype_pairs, spcl_terms
from mpcl.methods.base import SSLOutput, TemperatureParams
from mpcl.methods.clustering import cluster_features
from mpcl.methods.registry import register
from mpcl.methods.simclr import SimCLR


@dataclass
class SPCLParams(TemperatureParams):
    num_prototypes: int = knob(10, ge=2)       # k-means clusters = classifier outputs
    reassign: int = knob(1, ge=1)              # epochs between re-clusterings
    cluster_weight: float = knob(1.0, ge=0.0)  # weight of CE(classifier(h), pseudo_label[index])
    metric_weight: float = knob(1.0, ge=0.0)   # weight of the siamese metric BCE
    pca_dim: int = knob(128, ge=0)             # PCA-whitening dimension before k-means (0 = feature dim)
    kmeans_iters: int = knob(20, ge=1)
    # the released code's defects, fixed by default; the other position reproduces them
    classifier_outputs: str = knob("prototypes", choices=("prototypes", "classes"))  # released: classes
    pseudo_label_order: str = knob("index", choices=("index", "loader"))  # released: its sampler's draw order
    pair_labels: str = knob("pseudo", choices=("pseudo", "true"))  # released: pairs from ground-truth classes

    def check(self, cfg) -> None:
        from mpcl.data.datasets import dataset_spec

        if self.classifier_outputs != "classes":
            return
        classes = dataset_spec(cfg.data).num_classes
        if self.num_prototypes > classes:
            raise ConfigError(f"method.classifier_outputs='classes': method.num_prototypes={self.num_prototypes} "
                              f"needs at most {cfg.data.dataset}'s {classes} classifier outputs (or prototypes)")


def dataset_order(features: torch.Tensor, indices: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Rows of ``features`` (gathered in loader order, sample ``indices[r]`` in row r) moved
    to row = dataset index."""
    if indices.shape[0] != features.shape[0] or indices.shape[0] != num_samples:
        raise RuntimeError(f"SPCL: {features.shape[0]} features for {num_samples} training samples")
    out = torch.empty_like(features)
    out[indices] = features
    return out


def loader_order_draws(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """``pseudo_label_order=loader``: sample r gets the label of sample draws[r], the order in
    which a with-replacement sampler (the released code's) would have drawn the features."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch + 2)
    return torch.randint(num_samples, (num_samples,), generator=gen)


class SPCL(SimCLR):
    Params = SPCLParams
    supports_multi_crop = False
    loss_metrics = ("train/nce", "train/cluster_ce", "train/metric_bce", "train/metric_same_frac")

    @classmethod
    def label_use(cls, params: SPCLParams) -> str:
        return "method.pair_labels=true pairs samples by their classes" if params.pair_labels == "true" else ""

    def __init__(self, params: SPCLParams, cfg, num_classes: int, num_samples: int):
        super().__init__(params, cfg, num_classes, num_samples)
        mc = params
        self.seed = cfg.train.seed   # seeds the clustering and the classifier's re-initialisation
        outputs = num_classes if mc.classifier_outputs == "classes" else mc.num_prototypes
        self.classifier = nn.Linear(self.feature_dim, outputs)
        self.metric_head = nn.Linear(self.feature_dim, 1)
        self.register_buffer("pseudo_labels", torch.full((num_samples,), -1))   # long; -1: no prototype yet
        self.register_buffer("clustered_epoch", torch.tensor(-1))              # long; -1: never clustered
        self._clustered = False   # host-side copy of clustered_epoch >= 0 (no sync in the step)

    def worker_consistent_buffers(self) -> list[str]:
        return super().worker_consistent_buffers() + ["pseudo_labels", "clustered_epoch"]  # broadcast by rank 0

    # -- clustering -------------------------------------------------------------------------
    @torch.no_grad()
    def assign_prototypes(self, features: torch.Tensor, epoch: int) -> torch.Tensor:
        """Cluster dataset-ordered features on rank 0 and broadcast the assignments."""
        mc = self.params
        if dist.rank() == 0:
            labels = cluster_features(features, mc.num_prototypes, mc.pca_dim, mc.kmeans_iters,
                                      seed=self.seed * 100_003 + epoch)
        else:
            labels = torch.zeros(features.shape[0], dtype=torch.long, device=features.device)
        return dist.broadcast(labels.to(features.device))

    @torch.no_grad()
    def reset_classifier(self, epoch: int) -> None:
        """Weights normal(0, 0.01), bias 0 (the released init), from a generator seeded by
        (seed, epoch): the same on every worker."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 1)
        w = self.classifier.weight
        w.copy_(torch.empty(w.shape).normal_(0.0, 0.01, generator=gen))
        self.classifier.bias.zero_()

    def on_epoch_start(self, epoch: int, loaders, autocast) -> list[nn.Parameter]:
        mc = self.params
        if epoch % mc.reassign and int(self.clustered_epoch) >= 0:   # resumed mid-interval: keep them
            self._clustered = True
            return []
        was_training = self.training
        self.eval()
        feats, _ = ev.extract(self, loaders.train_eval, autocast)
        indices = dist.gather_uneven(loaders.train_eval.sample_indices().to(feats.device))
        feats = dataset_order(feats, indices, self.num_samples)
        labels = self.assign_prototypes(feats, epoch)
        if mc.pseudo_label_order == "loader":
            labels = labels[loader_order_draws(self.num_samples, self.seed, epoch)]   # CPU positions index any device
        self.pseudo_labels.copy_(labels)
        self.clustered_epoch.fill_(epoch)
        self._clustered = True
        self.reset_classifier(epoch)
        self.train(was_training)
        return list(self.classifier.parameters())

    # -- training ---------------------------------------------------------------------------
    def ssl_loss(self, batch: Batch, epoch: int) -> SSLOutput:
        mc = self.params
        n = batch.index.shape[0]
        h, z = self.encode_views(batch)
        if not self._clustered:      # no clustering yet (only when called outside the engine)
            pos, lse = self.contrast(z, batch)
            nce = (lse - pos).mean()
            return SSLOutput(nce, h, {"train/nce": nce.detach()})
        pseudo = self.pseudo_labels[batch.index]
        pair_by = pseudo if mc.pair_labels == "pseudo" else batch.label
        first, second = (i.to(h.device) for i in prototype_pairs(pair_by))
        same = (pair_by[first] == pair_by[second]).to(torch.float32)

        def rows(x, idx):            # [view 1; view 2] rows of the images at these positions
            return torch.cat([x[idx], x[n + idx]])

        z_a, z_b = rows(z, first), rows(z, second)
        logits = self.classifier(h).float()
        terms = spcl_terms(z_a, z_b, rows(h, first), rows(h, second), rows(logits, first), rows(logits, second),
                           pseudo[first], pseudo[second], same, lambda x: self.metric_head(x).float(),
                           mc.temperature, dist.gather_with_grad(z_a), dist.gather_with_grad(z_b), dist.rank())
        loss = terms["nce"] + mc.cluster_weight * terms["cluster"] + mc.metric_weight * terms["metric"]
        return SSLOutput(loss, h, {"train/nce": terms["nce"].detach(), "train/cluster_ce": terms["cluster"].detach(),
                                   "train/metric_bce": terms["metric"].detach(),
                                   "train/metric_same_frac": same.mean()})


register("spcl", SPCL)
