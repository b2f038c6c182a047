"""Run the feature-space dynamics of several variants from the same start, tracking the metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from mpcl.dynamics import metrics
from mpcl.dynamics.graph import AugmentationGraph
from mpcl.dynamics.messages import Variant, feature_loss, messages, normalize_rows

METRICS = ("alignment", "uniformity", "effective_rank", "knn_accuracy", "equilibrium_distance",
           "hard_pair_alignment", "easy_pair_alignment", "loss")


@dataclass(frozen=True)
class Settings:
    steps: int = 300
    lr: float = 0.05              # per-view step on the messages (lr * n on the mean loss)
    temperature: float = 0.2      # t of the uniformity loss and of the affinity graph P
    dim: int = 16
    knn_k: int = 10
    check_gradient: bool = True   # compare the messages with autograd's gradient at every step
    seed: int = 0

    def __post_init__(self):
        for name, v, ok in (("steps", self.steps, self.steps >= 1), ("lr", self.lr, self.lr > 0),
                            ("temperature", self.temperature, self.temperature > 0),
                            ("dim", self.dim, self.dim >= 2), ("knn_k", self.knn_k, self.knn_k >= 1)):
            if not ok:
                raise ValueError(f"{name}={v}: steps >= 1, lr > 0, temperature > 0, dim >= 2, knn_k >= 1")


def default_variants(attention: float = 1.0, attention_temperature: float = 1.0, bank_mix: float = 0.5,
                     stage_steps: int = 20) -> tuple[Variant, ...]:
    """Each loss alone, both, both with each technique, and alignment alone with multi-stage
    aggregation (does mixing in the previous stage slow the collapse?)."""
    att = dict(attention=attention, attention_temperature=attention_temperature)
    multi = dict(bank_mix=bank_mix, stage_steps=stage_steps)
    return (Variant("align", uniform=0.0), Variant("uniform", align=0.0), Variant("both"),
            Variant("attention", **att), Variant("multi_stage", **multi),
            Variant("align_multi_stage", uniform=0.0, **multi))


def initial_features(n: int, dim: int, seed: int) -> Tensor:
    """Uniform on the sphere (float64): no class structure to start from."""
    g = torch.Generator().manual_seed(seed)
    return normalize_rows(torch.randn(n, dim, generator=g, dtype=torch.float64))


def pair_quartiles(f0: Tensor, adjacency: Tensor) -> tuple[Tensor, Tensor]:
    """Positive pairs (i < j, A_ij > 0) in the lowest and the highest quarter of initial similarity."""
    i, j = torch.triu_indices(len(f0), len(f0), 1)
    keep = adjacency[i, j] > 0
    i, j = i[keep], j[keep]
    order = (f0[i] * f0[j]).sum(1).argsort()
    q = max(1, len(order) // 4)
    pairs = torch.stack([i[order], j[order]], 1)
    return pairs[:q], pairs[-q:]


def checked_messages(f: Tensor, a_hat: Tensor, snapshot: Tensor, variant: Variant,
                     temperature: float) -> tuple[Tensor, Tensor, float]:
    """(messages, loss, gradient error): the messages with the loss's autograd gradient beside
    them; the error max |messages + n dL/dF| / max |messages| is 0 up to rounding when the
    message-passing update is the gradient step."""
    x = f.detach().clone().requires_grad_(True)
    loss = feature_loss(x, a_hat, snapshot, variant, temperature)
    (grad,) = torch.autograd.grad(loss, x)
    m = messages(f, a_hat, snapshot, variant, temperature)
    return m, loss.detach(), float((m + len(f) * grad).abs().max() / m.abs().max())


def simulate(graph: AugmentationGraph, variant: Variant, settings: Settings, f0: Tensor) -> dict:
    """The metric history (steps + 1 entries each, step 0 = the start) and the final features."""
    a_hat = graph.normalized()
    hard, easy = pair_quartiles(f0, graph.adjacency)
    t = settings.temperature
    history: dict[str, list[float]] = {k: [] for k in METRICS}
    worst = 0.0
    f = snapshot = f0.clone()
    for s in range(settings.steps + 1):
        if s % variant.stage_steps == 0 and s < settings.steps:
            snapshot = f.clone()  # the features at the start of the stage: the multi-stage target's memory
        if settings.check_gradient and s < settings.steps:
            m, loss, error = checked_messages(f, a_hat, snapshot, variant, t)
            worst = max(worst, error)
        else:
            m, loss = None, feature_loss(f, a_hat, snapshot, variant, t)
        history["loss"].append(float(loss))
        history["alignment"].append(metrics.alignment(f, graph.adjacency))
        history["uniformity"].append(metrics.uniformity(f))
        history["effective_rank"].append(metrics.effective_rank(f))
        history["knn_accuracy"].append(metrics.knn_accuracy(f, graph.labels, graph.origin, settings.knn_k))
        history["equilibrium_distance"].append(metrics.equilibrium_distance(f, graph.adjacency, t))
        history["hard_pair_alignment"].append(metrics.hard_pair_alignment(f, hard))
        history["easy_pair_alignment"].append(metrics.hard_pair_alignment(f, easy))
        if s == settings.steps:
            break
        if m is None:
            m = messages(f, a_hat, snapshot, variant, t)
        f = normalize_rows(f + settings.lr * m)  # the step: messages, then back to the sphere
    history = {k: [float(f"{x:.6g}") for x in v] for k, v in history.items()}
    return {"variant": asdict(variant), "history": history,
            "final": {k: v[-1] for k, v in history.items()},
            "max_gradient_error": worst if settings.check_gradient else None,
            "features": f}
