"""The unit every loader yields and every method consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    views: list[torch.Tensor]   # each (n, 3, S, S) float, augmented, on the training device
    index: torch.Tensor         # (n,) int64 position of each sample in the training split
    label: torch.Tensor         # (n,) int64 class (used by the online probe; SSL losses ignore it)
