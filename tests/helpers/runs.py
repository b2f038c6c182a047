"""The overrides of runs that take seconds on a CPU: the preset part
``configs/parts/budget/tiny.yaml``, plus what each kind of run sets itself."""

from __future__ import annotations

from typing import Any

from mpcl.config import flatten
from mpcl.config.presets import read_preset, shipped_dir

TINY_PART = shipped_dir("preset") / "parts" / "budget" / "tiny.yaml"


def tiny_part() -> dict[str, Any]:
    """The tiny part's keys (``section.key``: value): small CNN, 512 samples, 1 epoch."""
    return flatten(read_preset(TINY_PART))


def tiny_overrides(out, method="simclr", **extra) -> list[str]:
    """A run that takes a few seconds on a laptop CPU: the tiny part, the method and ``out``,
    then ``extra`` (``section.key`` names passed as ``**{...}``), as ``key=value`` strings."""
    base = {"method.name": method, **tiny_part(), "out": str(out)}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_sweep_overrides(fmnist_path: str, subset: int, epochs: int) -> dict:
    """A sweep file's ``overrides`` for trials that take seconds on a CPU: the tiny part with
    smaller heads and batches, SGD without warm-up, the raw files at ``fmnist_path``."""
    return {**tiny_part(), "model.projector_hidden": 64, "model.projector_out": 32, "data.path": fmnist_path,
            "data.subset": subset, "data.val_subset": subset, "data.batch_size": 64, "data.num_workers": 0,
            "train.epochs": epochs, "optim.name": "sgd", "optim.lr": 0.3, "optim.scale_lr": False,
            "tracking.wandb": "disabled"}
