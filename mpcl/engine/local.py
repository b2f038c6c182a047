"""Running ``fit`` without Ray: checkpoints and metrics in the run directory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mpcl import distributed as dist
from mpcl.config import Config, dump
from mpcl.engine import checkpoint as ckpt
from mpcl.tracking import MetricsLog

SUMMARY_KEYS = ("train/loss", "val/knn_top1", "val/online_top1", "val/align", "val/uniform", "lr",
                "time/epoch_s")


def summary_line(metrics: dict[str, Any]) -> str:
    parts = [f"epoch {metrics.get('epoch')}"]
    for k in SUMMARY_KEYS:
        if k in metrics:
            v = metrics[k]
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return "  ".join(parts)


class LocalReporter:
    """``out/checkpoints/last.pt`` (atomic), ``out/metrics.jsonl``, ``out/config.yaml``."""

    def __init__(self, cfg: Config, echo: bool = True):
        self.out = Path(cfg.out)
        self.checkpoint_path = self.out / "checkpoints" / "last.pt"
        self.log = MetricsLog(self.out / "metrics.jsonl")
        self.echo = echo
        if dist.rank() == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            dump(cfg, self.out / "config.yaml")

    def latest_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.is_file():
            if dist.rank() == 0:
                self.log.truncate_after(-1)
            return None
        state = ckpt.load(self.checkpoint_path)
        if dist.rank() == 0:
            self.log.truncate_after(state["epoch"])
            if self.echo:
                print(f"resuming {self.checkpoint_path} after epoch {state['epoch']}", file=sys.stderr)
        return state

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if dist.rank() != 0:
            return
        self.log.append(metrics)
        if state is not None:
            ckpt.save_atomic(state, self.checkpoint_path)
        if self.echo:
            print(summary_line(metrics), flush=True)
