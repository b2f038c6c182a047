"""Mutual Contrastive Learning (Yang et al., AAAI 2022): the four terms between N networks.

Unsupervised (on MoCo): network i has queries q_i, keys k_i and a queue Q_i.
  VCL      = sum_i CE([q_i.k_i | q_i.Q_i] / T)
  ICL      = sum_{i != j} CE([q_i.k_j | q_i.Q_j] / T)
  soft VCL = sum_{i != j} KL(VCL logits of j || VCL logits of i)        (j detached)
  soft ICL = sum_{i < j} KL(l_ji || l_ij) + KL(l_ij || l_ji)            (the other detached)
Supervised (in-batch, positives = same label, self excluded): the same four terms with the
logits e_i . e_j^T / T of the embedding heads (the reference's ``SupMCL``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mpcl.losses.moco import infonce_queue, queue_logits, soft_kl
from mpcl.losses.supcon import supcon_loss


def _mutual_terms(n_net: int, logits: Callable[[int, int], torch.Tensor],
                  contrast: Callable[[int, int], torch.Tensor], kd_temperature: float,
                  zero: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four MCL terms from network i's view of network j: ``contrast(i, j)`` (a loss) and
    ``logits(i, j)`` (the similarity rows the soft terms compare). VCL: i with itself; ICL:
    every ordered pair i != j; soft VCL: KL between every two networks' own rows; soft ICL:
    KL between the rows of (i, j) and (j, i)."""
    intra = [logits(i, i) for i in range(n_net)]
    vcl, soft_vcl, icl, soft_icl = zero, zero, zero, zero
    for i in range(n_net):
        vcl = vcl + contrast(i, i)
        for j in range(n_net):
            if i != j:
                soft_vcl = soft_vcl + soft_kl(intra[i], intra[j], kd_temperature)
    for i in range(n_net):
        for j in range(i + 1, n_net):
            icl = icl + contrast(i, j) + contrast(j, i)
            l_ij, l_ji = logits(i, j), logits(j, i)
            soft_icl = soft_icl + soft_kl(l_ij, l_ji, kd_temperature) + soft_kl(l_ji, l_ij, kd_temperature)
    return {"vcl": vcl, "icl": icl, "soft_vcl": soft_vcl, "soft_icl": soft_icl}


def mcl_queue_terms(queries: list[torch.Tensor], keys: list[torch.Tensor], queues: list[torch.Tensor],
                    temperature: float, kd_temperature: float) -> dict[str, torch.Tensor]:
    """The four MCL terms of the MoCo-based form; ``queues`` are clones (not modified later)."""
    return _mutual_terms(
        len(queries),
        lambda i, j: queue_logits(queries[i], keys[j].detach(), queues[j].detach(), temperature),
        lambda i, j: infonce_queue(queries[i], keys[j], queues[j], temperature),
        kd_temperature, queries[0].new_zeros(()))


def mcl_supervised_terms(anchors: list[torch.Tensor], keys: list[torch.Tensor], anchor_labels: torch.Tensor,
                         key_labels: torch.Tensor, self_index: torch.Tensor, temperature: float,
                         kd_temperature: float) -> dict[str, torch.Tensor]:
    """The four terms of the supervised form. ``anchors[i]`` are network i's local normalised
    embeddings, ``keys[i]`` every worker's (the anchors themselves on one worker). As in the
    reference, the anchor's own row (same sample, any network) is neither a positive nor in
    the denominator, and the soft terms compare the raw similarity rows."""
    return _mutual_terms(
        len(anchors),
        lambda i, j: anchors[i] @ keys[j].T / temperature,
        lambda i, j: supcon_loss(anchors[i], keys[j], anchor_labels, key_labels, self_index, temperature),
        kd_temperature, anchors[0].new_zeros(()))


def mcl_weighted(terms: dict[str, torch.Tensor], alpha: float, beta: float, gamma: float, lam: float) -> torch.Tensor:
    """alpha VCL + beta ICL + gamma soft VCL + lam soft ICL (all 1: the reference's MoCo sum)."""
    return alpha * terms["vcl"] + beta * terms["icl"] + gamma * terms["soft_vcl"] + lam * terms["soft_icl"]
