"""Checkpoints: one file per save, written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mpcl.files import write_atomic


def save_atomic(state: dict[str, Any], path: str | os.PathLike, kept: str | None = None) -> Path:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``:
    a crash leaves either the previous checkpoint or the new one, never a torn file. A full
    disk is :class:`mpcl.files.WriteFailed` naming the file, its size and ``kept``."""
    return write_atomic(path, lambda f: torch.save(state, f), needs=state_bytes(state), kept=kept)


def state_bytes(tree: Any) -> int:
    """The bytes of the tensors in a nested state: about a checkpoint's size on disk."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(state_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(state_bytes(v) for v in tree)
    return 0


def kept_note(saved_epoch: int | None, resume: bool) -> str:
    """What a failed checkpoint write leaves, and how to go on: the tail of its message."""
    kept = "no earlier checkpoint" if saved_epoch is None else f"the checkpoint of epoch {saved_epoch} is kept"
    again = "the same command" if resume else "the same command with train.resume=true"
    return f"{kept}; {again} resumes once there is space"


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
