"""Running ``fit`` without Ray: checkpoints and metrics in the run directory."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from mpcl import distributed as dist
from mpcl.config import Config
from mpcl.engine import checkpoint as ckpt
from mpcl.files import LOCK_FILE
from mpcl.tracking import RunRecord, summary_line


def start_over(out: str | Path, why: str = "train.resume=false") -> Path | None:
    """What a run directory holds is moved into ``<out>.old-<YYYYmmdd-HHMMSS>`` (nothing
    written is lost) so the run starts in an empty one: for ``train.resume=false``, or for
    another reason that the message names (``why``). The lock file stays: the writer holding
    it keeps holding ``out``. Returns where the old run went, or None when there was none."""
    out = Path(out)
    entries = [p for p in out.iterdir() if p.name != LOCK_FILE] if out.is_dir() else []
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = out.with_name(f"{out.name}.old-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = out.with_name(f"{out.name}.old-{stamp}-{n}")
    aside.mkdir()
    for entry in entries:
        entry.rename(aside / entry.name)
    print(f"{why}: the previous run in {out} was moved to {aside}", file=sys.stderr)
    return aside


class LocalReporter:
    """``out/checkpoints/last.pt`` (atomic) and, on rank 0, the run's record
    (``out/config.yaml``, ``out/metrics.jsonl``, wandb: as in a Ray run). ``close`` when done."""

    def __init__(self, cfg: Config, echo: bool = True):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.checkpoint_path = self.out / "checkpoints" / "last.pt"
        self.echo = echo
        self.saved_epoch: int | None = None   # the epoch of out/checkpoints/last.pt
        self.record = RunRecord(cfg, self.out) if dist.rank() == 0 else None
        if self.record is not None and not cfg.train.resume:
            start_over(self.out)

    def latest_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.is_file():
            return None
        state = ckpt.load(self.checkpoint_path)
        self.saved_epoch = state["epoch"]
        return state

    def start(self, state: dict[str, Any] | None) -> None:
        if self.record is not None:
            self.record.start(state)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if self.record is None:
            return
        self.record.append(metrics)
        if state is not None:
            ckpt.save_atomic(state, self.checkpoint_path, kept=ckpt.kept_note(self.saved_epoch, self.cfg.train.resume))
            self.saved_epoch = state["epoch"]
        if self.echo:
            print(summary_line(metrics), flush=True)

    def progress(self, epoch: int, done: int, total: int) -> None:
        """The loop's own bar shows it (on a terminal)."""

    def write_file(self, name: str, data: bytes) -> None:
        if self.record is not None:
            self.record.write_file(name, data)

    def close(self) -> None:
        if self.record is not None:
            self.record.close()
