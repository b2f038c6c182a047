"""What loaders hand to the engine: the ``Batch`` every training loader yields and every
method consumes, and ``Loaders``, the set of loaders one worker trains and evaluates with."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from mpcl.data.datasets import DatasetSpec


@dataclass
class Batch:
    views: list[torch.Tensor]   # each (n, 3, S, S) float, augmented, on the training device
    index: torch.Tensor         # (n,) int64 position of each sample in the training split
    label: torch.Tensor         # (n,) int64 class (used by the online probe; SSL losses ignore it)


class TrainLoader(Protocol):
    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...


class EvalBatches(Protocol):
    """Un-augmented (images, labels) batches of one rank's share of a split."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...
    def sample_indices(self) -> torch.Tensor: ...


@dataclass
class Loaders:
    train: TrainLoader                     # yields Batch
    train_eval: EvalBatches                # kNN bank, linear probe
    val: EvalBatches
    val_pairs: TrainLoader                 # two augmented views of a fixed validation subset
    spec: DatasetSpec
    num_train: int                         # samples in the (subset) training split
