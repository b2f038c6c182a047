"""The torch training loader's seeding (shared with the FFCV loader): an epoch replays exactly,
epochs differ, and the ranks of one epoch see disjoint samples augmented differently."""

from __future__ import annotations

import torch

from mpcl.data.augment import SSLAugment
from mpcl.data.tensor_loader import TensorTrainLoader, augment_generator

CPU = torch.device("cpu")


def _epoch(loader: TensorTrainLoader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader.set_epoch(epoch)
    batches = list(loader)
    return torch.cat([b.index for b in batches]), torch.cat([b.views[0] for b in batches])


def test_epochs_replay_and_differ_ranks_split():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (64,), generator=g)
    loader = TensorTrainLoader(images, labels, 16, 0, 1, 3, SSLAugment(8), CPU)
    index, views = _epoch(loader, 1)
    again_index, again_views = _epoch(loader, 1)
    assert torch.equal(index, again_index) and torch.equal(views, again_views)   # a resumed epoch replays
    assert not torch.equal(_epoch(loader, 2)[0], index)                          # the next one does not
    ranks = [TensorTrainLoader(images, labels, 16, r, 2, 3, SSLAugment(8), CPU) for r in (0, 1)]
    parts = [_epoch(r, 1)[0] for r in ranks]
    assert not set(parts[0].tolist()) & set(parts[1].tolist())
    assert sorted(torch.cat(parts).tolist()) == sorted(index.tolist())           # same global batches
    draws = [torch.rand(4, generator=augment_generator(3, 1, r, CPU)) for r in (0, 1)]
    assert not torch.equal(draws[0], draws[1])
