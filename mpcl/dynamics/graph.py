"""Augmentation graphs you can see: nodes are augmented views, edges join views that can come
from the same natural sample.

A view ``i`` can be produced from some natural samples (its *sources*, a 0/1 incidence matrix
``B``, views x natural samples). Two views are positive pairs as often as they share a source,
so the augmentation graph is ``A = B B^T`` (diagonal included: a view is its own positive, as
in the feature-space InfoNCE where ``x+`` may equal ``x``). Every view also has an *origin*
(the natural sample it was drawn from) and a latent *class* (its origin's class).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class GraphError(ValueError):
    """A graph that cannot be built from these arguments (one line)."""


@dataclass(frozen=True)
class AugmentationGraph:
    adjacency: Tensor      # (n, n) symmetric, non-negative, float64; A = B B^T (+ overlap edges)
    labels: Tensor         # (n,) latent class of each view
    origin: Tensor         # (n,) natural sample each view was drawn from
    description: str

    @property
    def n(self) -> int:
        return self.adjacency.shape[0]

    def normalized(self) -> Tensor:
        """D^{-1/2} A D^{-1/2}: symmetric, top eigenvalue 1 (the alignment operator)."""
        d = self.adjacency.sum(1).rsqrt()
        return d[:, None] * self.adjacency * d[None, :]

    def components(self) -> int:
        """Number of connected components (alignment alone collapses each one to a point)."""
        linked = self.adjacency > 0
        label = torch.arange(self.n)
        while True:  # every view takes the smallest label among its neighbours, until none changes
            nxt = torch.where(linked, label[None, :], self.n).min(1).values.minimum(label)
            if torch.equal(nxt, label):
                return int(label.unique().numel())
            label = nxt

    def stats(self) -> dict:
        a = self.adjacency
        same = self.labels[:, None] == self.labels[None, :]
        off = ~torch.eye(self.n, dtype=torch.bool)
        return {"views": self.n, "classes": int(self.labels.max()) + 1,
                "natural_samples": int(self.origin.max()) + 1,
                "edges": int(((a > 0) & off).sum()) // 2, "components": self.components(),
                "intra_class_edge_weight": float(a[same & off].sum() / a[off].sum())}


def synthetic_graph(classes: int = 4, naturals: int = 8, views: int = 4, p_intra: float = 0.1,
                    p_inter: float = 0.01, seed: int = 0) -> AugmentationGraph:
    """``classes`` latent classes x ``naturals`` natural samples each x ``views`` augmented views each.

    A view comes from its origin and, independently, can also come from each other natural sample
    of its class with probability ``p_intra`` and from each natural sample of another class with
    probability ``p_inter``: augmentations overlap within a class more than across (p_intra > p_inter).
    """
    for name, v in (("classes", classes), ("naturals", naturals), ("views", views)):
        if v < 1:
            raise GraphError(f"{name}={v} must be at least 1")
    for name, p in (("p_intra", p_intra), ("p_inter", p_inter)):
        if not 0.0 <= p <= 1.0:
            raise GraphError(f"{name}={p} must be a probability in [0, 1]")
    if classes < 2:
        raise GraphError(f"classes={classes}: the kNN accuracy of the latent classes needs at least 2")
    g = torch.Generator().manual_seed(seed)
    n_nat = classes * naturals
    nat_class = torch.arange(n_nat) // naturals
    origin = torch.arange(n_nat).repeat_interleave(views)
    labels = nat_class[origin]
    same_class = labels[:, None] == nat_class[None, :]
    p = torch.where(same_class, p_intra, p_inter).double()
    sources = torch.rand(p.shape, generator=g, dtype=torch.float64) < p
    sources[torch.arange(len(origin)), origin] = True
    b = sources.double()
    return AugmentationGraph(b @ b.T, labels, origin,
                             f"synthetic: {classes} classes x {naturals} natural samples x {views} views, "
                             f"p_intra={p_intra}, p_inter={p_inter}, seed={seed}")


def fashion_mnist_graph(root: str | Path, images: int = 80, views: int = 4, overlap_k: int = 3,
                        seed: int = 0) -> AugmentationGraph:
    """``images`` Fashion-MNIST training images (class-balanced), ``views`` augmented views each
    (mpcl's SSLAugment, the SimCLR recipe at 32x32), edges between views of the same image.

    Those edges alone make the graph a union of cliques, one per image, with nothing joining two
    images; in the paper's augmentation graph images are joined where their augmentations
    overlap. ``overlap_k`` models that: each view is also joined (weight 1, symmetrised) to its
    ``overlap_k`` nearest views of other images in pixel space (0: shared source only).
    """
    from mpcl.data.augment import SSLAugment
    from mpcl.data.sources import gray_to_rgb_padded, read_fashion_mnist

    if images < 2 or views < 1 or overlap_k < 0:
        raise GraphError(f"images={images} (>= 2), views={views} (>= 1), overlap_k={overlap_k} (>= 0)")
    x, y = read_fashion_mnist(root, "train")
    rng = np.random.default_rng(seed)
    classes = int(y.max()) + 1
    per_class = -(-images // classes)
    pick = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(classes)])[:images]
    imgs = torch.from_numpy(gray_to_rgb_padded(x[pick])).permute(0, 3, 1, 2).contiguous()
    aug = SSLAugment(32, cpu_kernel=False)  # the eager colour ops: no kernel compile for a few hundred views
    g = torch.Generator().manual_seed(seed)
    batch = imgs.repeat_interleave(views, 0)
    pixels = aug(batch, generator=g).flatten(1).double()
    origin = torch.arange(len(pick)).repeat_interleave(views)
    labels = torch.from_numpy(y[pick]).long()[origin]
    adjacency = (origin[:, None] == origin[None, :]).double()
    if overlap_k:
        u = torch.nn.functional.normalize(pixels - pixels.mean(0), dim=1)
        sim = (u @ u.T).masked_fill(origin[:, None] == origin[None, :], float("-inf"))
        near = torch.zeros_like(adjacency).scatter_(1, sim.topk(overlap_k, dim=1).indices, 1.0)
        adjacency = adjacency + ((near + near.T) > 0).double()
    return AugmentationGraph(adjacency, labels, origin,
                             f"Fashion-MNIST ({root}): {len(pick)} images x {views} views (SSLAugment 32x32), "
                             f"shared-source edges + {overlap_k} pixel-space overlap neighbours per view, seed={seed}")
