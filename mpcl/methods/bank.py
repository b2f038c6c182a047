"""A per-sample memory bank with epoch snapshots (SimSiam-Multi's multi-stage aggregation).

Reads during epoch e see the snapshot of epoch e-1; writes during epoch e go to a second
buffer that becomes the snapshot when the engine calls ``end_epoch``. Both buffers, the
validity masks and the epoch the snapshot holds are buffers, so they travel in checkpoints.
Under several workers the caller passes gathered (index, value) pairs so that every
worker's bank holds every sample.
"""

from __future__ import annotations

import torch
from torch import nn


class SnapshotBank(nn.Module):
    consistent_across_workers = True   # every write is gathered: DDP must not broadcast it

    def __init__(self, num_samples: int, dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("snapshot", torch.zeros(num_samples, dim, dtype=dtype))
        self.register_buffer("pending", torch.zeros(num_samples, dim, dtype=dtype))
        self.register_buffer("snapshot_valid", torch.zeros(num_samples, dtype=torch.bool))
        self.register_buffer("pending_valid", torch.zeros(num_samples, dtype=torch.bool))
        # the epoch whose writes the snapshot holds (-1: none yet)
        self.register_buffer("snapshot_epoch", torch.tensor(-1, dtype=torch.long))

    def read(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, valid) of the previous epoch's snapshot for these sample indices."""
        return self.snapshot[index], self.snapshot_valid[index]

    @torch.no_grad()
    def write(self, index: torch.Tensor, values: torch.Tensor) -> None:
        self.pending[index] = values.detach().to(self.pending.dtype)
        self.pending_valid[index] = True

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> None:
        """What was written in ``epoch`` becomes the snapshot read in epoch + 1."""
        self.snapshot.copy_(self.pending)
        self.snapshot_valid.copy_(self.pending_valid)
        self.snapshot_epoch.fill_(epoch)


def bank_for(cfg, num_samples: int) -> SnapshotBank:
    """The per-sample bank of a multi-stage method: one ``projector_out`` row per sample,
    stored as ``method.bank_dtype``."""
    return SnapshotBank(num_samples, cfg.model.projector_out, getattr(torch, cfg.method.bank_dtype))


def bank_mixes(cfg, epoch: int) -> bool:
    """Epochs 0..``bank_warmup_epochs`` (0-based) use the plain target, as the released
    SimSiam-Multi does (its first mixed epoch is 51 with a warm-up of 50)."""
    return epoch > cfg.method.bank_warmup_epochs
