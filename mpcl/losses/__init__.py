"""Losses as pure functions of tensors. Under several workers the caller passes gathered
inputs explicitly (see ``mpcl.distributed``); nothing here talks to a process group."""

from mpcl.losses.contrastive import (
    attention_weighted_nt_xent,
    attention_weights,
    contrastive_terms,
    nt_xent,
    pair_indices,
)
from mpcl.losses.siamese import bank_target, negative_cosine, symmetric_negative_cosine

__all__ = [
    "contrastive_terms", "nt_xent", "pair_indices", "attention_weights", "attention_weighted_nt_xent",
    "negative_cosine", "symmetric_negative_cosine", "bank_target",
]
