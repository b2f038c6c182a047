"""Metrics tracking: ``metrics.jsonl`` in the run directory, always (one JSON object per epoch),
the run's record (config, metrics, wandb), and the one-line summary of an epoch."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpcl.files import append_line, write_atomic, write_text_atomic

# what an epoch's summary shows, in this order: the line printed per epoch and the run page's table
SUMMARY_KEYS = ("train/loss", "val/knn_top1", "val/online_top1", "val/align", "val/uniform", "lr",
                "time/epoch_s")


def summary_line(metrics: dict[str, Any]) -> str:
    parts = [f"epoch {metrics.get('epoch')}"]
    for k in SUMMARY_KEYS:
        if k in metrics:
            v = metrics[k]
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return "  ".join(parts)


def write_json(path: str | os.PathLike, tree: Any) -> None:
    """``path`` replaced atomically (temp file + rename): a reader sees the old or the new file."""
    write_text_atomic(path, json.dumps(tree, indent=2, default=str))


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf: keep the fact, readable by any parser
    return v


def parse_metrics(text: str) -> list[dict[str, Any]]:
    """The epochs' rows of a ``metrics.jsonl``. Lines that are not a JSON object with an
    integer ``epoch`` (a line torn by a crash mid-write, or anything else not written here)
    are skipped."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        epoch = row.get("epoch") if isinstance(row, dict) else None
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            rows.append(row)
    return rows


class MetricsLog:
    """Appends one line per epoch; ``truncate_after(epoch)`` drops lines of epochs a resumed
    run will replay, so the file never holds an epoch twice."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, metrics: dict[str, Any]) -> None:
        """One line, whole or not at all (a full disk leaves the earlier lines as they were)."""
        append_line(self.path, json.dumps({k: _jsonable(v) for k, v in metrics.items()}),
                    kept="its earlier lines are kept")

    def read(self) -> list[dict[str, Any]]:
        return parse_metrics(self.path.read_text(errors="replace")) if self.path.is_file() else []

    def truncate_after(self, epoch: int) -> None:
        """Cut the file after the last whole line of an epoch <= ``epoch`` (and so a torn last
        line), in place: cutting needs no free space, so a full disk does not stop a resume."""
        if not self.path.is_file():
            return
        end = keep = 0
        with self.path.open("rb") as f:
            for line in f:
                end += len(line)
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if line.endswith(b"\n") and isinstance(row, dict) and isinstance(row.get("epoch"), int):
                    if row["epoch"] > epoch:
                        break
                    keep = end
        if keep < self.path.stat().st_size:
            os.truncate(self.path, keep)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    return MetricsLog(Path(run_dir) / "metrics.jsonl").read()


class RunRecord:
    """What rank 0 keeps of a run, the same with and without Ray: ``out/config.yaml``,
    ``out/metrics.jsonl`` and, per ``tracking.wandb``, a wandb run (one step per epoch).
    Nothing is written before :meth:`start`, which comes once the checkpoint (if any) has
    loaded: a run that cannot resume leaves the old record as it was. ``push(name)`` is called
    after each file changes (a run directory that is a URI copies it there)."""

    def __init__(self, cfg, out: str | os.PathLike, push: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.out = Path(out)
        self.metrics = MetricsLog(self.out / "metrics.jsonl")
        self.push = push or (lambda name: None)
        self.wandb = None

    def start(self, state: dict[str, Any] | None) -> None:
        """``state``: the checkpoint the run resumes from, or None. Drop the lines of epochs
        after the checkpoint's (the run replays them), write the resolved config and open the
        wandb run."""
        from mpcl.config import dump
        from mpcl.tracking.wandb_run import WandbRun

        last_epoch = state["epoch"] if state is not None else -1
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics.truncate_after(last_epoch)
        dump(self.cfg, self.out / "config.yaml")
        self.push("metrics.jsonl")
        self.push("config.yaml")
        self.wandb = WandbRun.start(self.cfg, self.out)
        if state is not None:
            print(f"resuming {self.out} after epoch {last_epoch}", file=sys.stderr)

    def append(self, metrics: dict[str, Any]) -> None:
        self.metrics.append(metrics)
        self.push("metrics.jsonl")
        if self.wandb is not None:
            self.wandb.log(metrics, step=int(metrics["epoch"]))

    def write_file(self, name: str, data: bytes) -> None:
        """``out/name`` replaced whole by ``data`` (a full disk is one line), then pushed."""
        write_atomic(self.out / name, lambda f: f.write(data), needs=len(data))
        self.push(name)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
