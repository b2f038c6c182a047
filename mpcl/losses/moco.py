"""MoCo's InfoNCE against a queue of keys and the soft (KL) term of knowledge distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def queue_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """[q.k+ | q.Q] / T, shape (n, 1 + K): column 0 is the positive. ``q``, ``k`` (n, d) and
    ``queue`` (K, d) are L2-normalised; ``queue`` must not be modified afterwards (clone it)."""
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ queue.T
    return torch.cat([pos, neg], dim=1) / temperature


def infonce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of ``queue_logits`` with the positive (column 0) as the target."""
    logits = queue_logits(q, k.detach(), queue.detach(), temperature)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, batch mean, teacher detached
    (Hinton et al.; MCL's ``KLDiv(y_s, y_t)``): pulls the student's distribution to the teacher's."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits.detach() / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature ** 2
