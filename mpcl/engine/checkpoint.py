"""Checkpoints: one file per save, written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_atomic(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``:
    a crash leaves either the previous checkpoint or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that this config cannot resume (one line)."""


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a readable mpcl checkpoint (an empty file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a torn or foreign file: say which
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise CheckpointError(f"{path}: not a readable mpcl checkpoint ({type(e).__name__}: {detail})") from None
    if not isinstance(state, dict) or not {"model", "epoch", "config"} <= state.keys():
        raise CheckpointError(f"{path}: not an mpcl checkpoint (no model, epoch and config in it)")
    return state


# what a checkpoint's tensors depend on: a change here makes the saved state unloadable
STATE_SHAPING = ("model.", "method.", "data.dataset", "data.subset", "data.batch_size", "scale.workers",
                 "optim.name", "optim.exclude_bn_bias")


def resume_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """The config keys that differ between a checkpoint's config and the current one and may
    shape its state, as ``key: 'old' -> 'new'`` (the most likely reasons a resume fails)."""
    from mpcl.config import flatten

    old, new = flatten(saved), flatten(current)
    diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new
            if k.startswith(STATE_SHAPING) and old.get(k) != new[k]]
    return "; ".join(diff)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
