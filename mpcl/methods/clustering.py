"""PCA-whitening and k-means in torch (on the training device; no faiss needed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def pca_whiten(x: torch.Tensor, dim: int = 0, eps: float = 1e-5) -> torch.Tensor:
    """Centre, project on the top ``dim`` principal components (0 or more than the feature
    dimension: all of them) and scale each to unit variance."""
    x = x.double()
    x = x - x.mean(0)
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)                 # ascending
    k = x.shape[1] if dim <= 0 else min(dim, x.shape[1])
    evals, evecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    return (x @ evecs / torch.sqrt(evals.clamp(min=0) + eps)).float()


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)[None]).clamp(min=0)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, chunk: int = 16384
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding. Returns (assignments (n,), centroids (k, d)).
    Deterministic for a given seed; an emptied cluster is re-seeded with the point farthest
    from its centroid."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means: {n} points for {k} clusters")
    gen = torch.Generator().manual_seed(seed)
    x = x.float()

    def assign(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        best_d, best_i = [], []
        for s in range(0, n, chunk):
            d = _sq_dist(x[s:s + chunk], c)
            v, i = d.min(1)
            best_d.append(v)
            best_i.append(i)
        return torch.cat(best_i), torch.cat(best_d)

    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x[first]]
    closest = _sq_dist(x, x[first][None]).squeeze(1)
    for _ in range(1, k):
        probs = closest.double().cpu()
        probs = probs / probs.sum() if probs.sum() > 0 else torch.full_like(probs, 1.0 / n)
        nxt = int(torch.multinomial(probs, 1, generator=gen))
        centroids.append(x[nxt])
        closest = torch.minimum(closest, _sq_dist(x, x[nxt][None]).squeeze(1))
    c = torch.stack(centroids)
    for _ in range(iters):
        labels, d = assign(c)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        new = sums / counts.clamp(min=1)[:, None].to(sums.dtype)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        for j in empty:                       # re-seed with the worst-fitted point
            far = int(d.argmax())
            new[j] = x[far]
            d[far] = 0
        if torch.equal(new, c):
            break
        c = new
    labels, _ = assign(c)
    return labels, c


@torch.no_grad()
def cluster_features(features: torch.Tensor, k: int, pca_dim: int, iters: int, seed: int) -> torch.Tensor:
    """SPCL's clustering: PCA-whiten, L2-normalise, k-means. Returns the assignments."""
    x = F.normalize(pca_whiten(features, pca_dim), dim=1)
    return kmeans(x, k, iters, seed)[0]
