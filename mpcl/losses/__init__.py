"""Losses as pure functions of tensors. Under several workers the caller passes gathered
inputs explicitly (see ``mpcl.distributed``); nothing here talks to a process group."""

from mpcl.losses.contrastive import (
    ATTENTION_TARGETS,
    attention_weighted_nt_xent,
    attention_weights,
    contrastive_terms,
    graph_attention_nt_xent,
    nt_xent,
    pair_indices,
)
from mpcl.losses.siamese import bank_target, negative_cosine, symmetric_negative_cosine
from mpcl.losses.barlow import barlow_twins_loss, cross_correlation, standardize
from mpcl.losses.mcl import mcl_queue_terms, mcl_supervised_terms, mcl_weighted
from mpcl.losses.moco import infonce_queue, queue_logits, soft_kl
from mpcl.losses.spcl import prototype_ce, prototype_pairs, siamese_metric_loss, spcl_terms
from mpcl.losses.supcon import multi_positive_cosine, multi_positive_terms, supcon_loss

__all__ = [
    "contrastive_terms", "nt_xent", "pair_indices", "attention_weights", "attention_weighted_nt_xent",
    "graph_attention_nt_xent", "ATTENTION_TARGETS",
    "negative_cosine", "symmetric_negative_cosine", "bank_target",
    "barlow_twins_loss", "cross_correlation", "standardize",
    "supcon_loss", "multi_positive_terms", "multi_positive_cosine",
    "queue_logits", "infonce_queue", "soft_kl",
    "mcl_queue_terms", "mcl_supervised_terms", "mcl_weighted",
    "prototype_pairs", "siamese_metric_loss", "prototype_ce", "spcl_terms",
]
