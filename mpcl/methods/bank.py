"""A per-sample memory bank with epoch snapshots (SimSiam-Multi's multi-stage aggregation).

Reads during epoch e see the snapshot of epoch e-1; writes during epoch e go to a second
buffer that becomes the snapshot when the engine calls ``end_epoch``. Both buffers, the
validity masks and the epoch the snapshot holds are buffers, so they travel in checkpoints.
Under several workers the caller passes gathered (index, value) pairs so that every
worker's bank holds every sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mpcl.config import MethodParams, knob


@dataclass
class BankParams(MethodParams):
    """The knobs of multi-stage aggregation through a per-sample bank (simsiam_multi,
    simclr_attn_multi)."""

    bank_mix: float = knob(0.5, ge=0.0, le=1.0)   # b in (1 - b) * z + b * bank[index]
    # the last plain-target epoch (0-based): the first mixed epoch is bank_warmup_epochs + 1
    # (released SimSiam-Multi: 51)
    bank_warmup_epochs: int = knob(50, ge=0)
    bank_dtype: str = knob("float32", choices=("float32", "bfloat16"))   # storage of the bank

    def bank_mixes(self, epoch: int) -> bool:
        """Epochs 0..``bank_warmup_epochs`` (0-based) use the plain target, as the released
        SimSiam-Multi does (its first mixed epoch is 51 with a warm-up of 50)."""
        return epoch > self.bank_warmup_epochs


class SnapshotBank(nn.Module):
    consistent_across_workers = True   # every write is gathered: DDP must not broadcast it

    def __init__(self, num_samples: int, dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("snapshot", torch.zeros(num_samples, dim, dtype=dtype))
        self.register_buffer("pending", torch.zeros(num_samples, dim, dtype=dtype))
        self.register_buffer("snapshot_valid", torch.zeros(num_samples, dtype=torch.bool))
        self.register_buffer("pending_valid", torch.zeros(num_samples, dtype=torch.bool))
        # the epoch whose writes the snapshot holds (-1: none yet)
        self.register_buffer("snapshot_epoch", torch.tensor(-1))

    @classmethod
    def of(cls, params: BankParams, num_samples: int, dim: int) -> SnapshotBank:
        """The bank of a multi-stage method: one ``dim`` row per sample, stored as
        ``bank_dtype``."""
        return cls(num_samples, dim, getattr(torch, params.bank_dtype))

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
