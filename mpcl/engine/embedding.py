"""A sample of the validation features kept at the end of training, ``out/embedding.npz``:
what ``run.py report`` draws its 2-D map of the embedding from.

The file holds at most ``MAX_POINTS`` validation samples (a seeded draw, the same samples in
every run of a dataset), as arrays:

- ``features``: (n, d) float16 backbone features scaled to unit length (the cosine geometry
  the kNN evaluation measures; unit length also keeps float16 far from overflow),
- ``labels``: (n,) int64 classes, ``index``: (n,) int64 positions in the validation split,
- ``epoch``: the epoch whose model made them, ``dataset``: ``data.dataset``,
- ``class_names``: the classes' names in label order (empty where mpcl knows none).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mpcl import distributed as dist
from mpcl.config import Config
from mpcl.data.batch import Loaders
from mpcl.metrics import SplitFeatures

EMBEDDING_FILE = "embedding.npz"
MAX_POINTS = 2000
SAMPLE_SEED = 0

def sample_positions(n: int, max_points: int = MAX_POINTS, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Sorted positions of at most ``max_points`` of ``n`` samples, drawn without replacement
    by a generator seeded with ``seed`` (all of them when ``n <= max_points``)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def embedding_bytes(features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, epoch: int,
                    dataset: str, class_names: tuple[str, ...] = (), max_points: int = MAX_POINTS) -> bytes:
    """The ``embedding.npz`` of the validation split's ``features``, ``labels`` and dataset
    ``indices`` (row for row), sampled down to ``max_points`` rows."""
    keep = torch.from_numpy(sample_positions(len(labels), max_points))
    unit = F.normalize(features[keep.to(features.device)].float(), dim=1)
    buffer = io.BytesIO()
    np.savez(buffer, features=unit.cpu().numpy().astype(np.float16),
             labels=labels[keep.to(labels.device)].cpu().numpy().astype(np.int64),
             index=indices[keep.to(indices.device)].cpu().numpy().astype(np.int64),
             epoch=np.int64(epoch), dataset=np.str_(dataset),
             class_names=np.array(class_names, dtype=np.str_))
    return buffer.getvalue()


def save_embedding(feats: SplitFeatures, loaders: Loaders, cfg: Config, epoch: int,
                   write: Callable[[str, bytes], None]) -> None:
    """Every rank calls this with the gathered features of an evaluation; rank 0 hands the
    file's bytes to ``write(name, data)`` (the reporter's, which knows the run directory)."""
    indices = dist.gather_uneven(loaders.val.sample_indices().to(feats.val_y.device))
    if dist.rank() != 0:
        return
    write(EMBEDDING_FILE, embedding_bytes(feats.val_f, feats.val_y, indices, epoch, cfg.data.dataset,
                                          loaders.spec.classes, max_points=MAX_POINTS))
