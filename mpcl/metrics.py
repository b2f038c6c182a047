"""What is measured of an encoder's features: extraction over a loader, weighted kNN,
online-probe accuracy, alignment / uniformity, and an offline linear probe on frozen features.
Plain functions of tensors (and of loaders that yield ``(images, labels)``), used by the
engine's evaluation and by methods that evaluate their own networks."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpcl import distributed as dist


@torch.no_grad()
def extract(model, loader, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features (float32) and labels of every sample the loader yields, gathered."""
    feats, labels = [], []
    for x, y in loader:
        with autocast():
            feats.append(model(x).float())
        labels.append(y)
    dim = getattr(model, "feature_dim", None)
    f = torch.cat(feats) if feats else torch.zeros(0, dim or 1)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    return dist.gather_uneven(f), dist.gather_uneven(y)


@dataclass
class SplitFeatures:
    """Features and labels of the training split (without augmentation) and of the validation split."""

    train_f: torch.Tensor
    train_y: torch.Tensor
    val_f: torch.Tensor
    val_y: torch.Tensor

    def knn_top1(self, num_classes: int, k: int, temperature: float) -> float:
        return knn_top1(self.train_f, self.train_y, self.val_f, self.val_y, num_classes, k, temperature)


def split_features(model, loaders, autocast) -> SplitFeatures:
    """``extract`` over ``loaders.train_eval`` and ``loaders.val``."""
    return SplitFeatures(*extract(model, loaders.train_eval, autocast), *extract(model, loaders.val, autocast))


@torch.no_grad()
def knn_top1(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
             num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Weighted kNN top-1 (%) with cosine similarity: each of the k nearest training samples
    votes for its class with weight exp(sim / T) (Wu et al. 2018, the SSL standard)."""
    train_f = F.normalize(train_f, dim=1)
    test_f = F.normalize(test_f, dim=1)
    k = min(k, train_f.shape[0])
    correct = 0
    for start in range(0, test_f.shape[0], chunk):
        sims = test_f[start:start + chunk] @ train_f.T
        top_sim, top_idx = sims.topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], num_classes, device=sims.device)
        votes.scatter_add_(1, train_y[top_idx], (top_sim / temperature).exp())
        correct += (votes.argmax(1) == test_y[start:start + chunk]).sum().item()
    return 100.0 * correct / max(test_f.shape[0], 1)


@torch.no_grad()
def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """E ||f(x) - f(x+)||^alpha over positive pairs of normalised embeddings (lower: aligned)."""
    return (F.normalize(z1, dim=1) - F.normalize(z2, dim=1)).norm(dim=1).pow(alpha).mean().item()


@torch.no_grad()
def uniformity(z: torch.Tensor, t: float = 2.0, max_samples: int = 4096) -> float:
    """log E exp(-t ||f(x) - f(y)||^2) over distinct pairs (lower: more uniform)."""
    z = F.normalize(z[:max_samples], dim=1)
    sq = torch.pdist(z).pow(2)
    return (torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())).item()


@torch.no_grad()
def probe_top1(probe: torch.nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (probe(feats).argmax(1) == labels).float().mean().item()


def linear_classifier(train_f: torch.Tensor, train_y: torch.Tensor, num_classes: int, epochs: int = 100,
                      lr: float = 0.1, weight_decay: float = 1e-4, batch_size: int = 1024,
                      seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A zero-initialised linear classifier trained on frozen features standardised with the
    training split's statistics, by SGD (momentum 0.9) on a cosine schedule over every step
    (the recipes' linear evaluation, minus augmentation: features are extracted once).
    Returns features -> logits, the standardisation included."""
    mean, std = train_f.mean(0), train_f.std(0) + 1e-6
    train_f = (train_f - mean) / std
    clf = torch.nn.Linear(train_f.shape[1], num_classes).to(train_f.device)
    torch.nn.init.zeros_(clf.weight)
    torch.nn.init.zeros_(clf.bias)
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * math.ceil(train_f.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(train_f.shape[0], generator=gen).to(train_f.device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(clf(train_f[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return lambda feats: clf((feats - mean) / std)


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, **training) -> float:
    """Top-1 (%) on the test features of ``linear_classifier(train_f, train_y, num_classes, **training)``."""
    predict = linear_classifier(train_f, train_y, num_classes, **training)
    with torch.no_grad():
        return 100.0 * (predict(test_f).argmax(1) == test_y).float().mean().item()
