"""wandb for one run, rank 0 only (the caller guards: in Ray Train V2
``setup_wandb(rank_zero_only=True)`` does not).

``tracking.wandb``: ``online`` | ``offline`` (files in ``<out>/wandb``; ``wandb sync`` uploads
them later) | ``disabled`` | ``auto`` = online when an API key is configured (``WANDB_API_KEY``
or a ``wandb login`` entry in ~/.netrc), offline otherwise. ``WANDB_MODE`` in the
environment wins over ``auto``. The key itself is never read into the config, the metrics or
the logs: wandb reads it from the environment or netrc.

The wandb run id is kept in ``<out>/wandb_id`` so that a resumed run continues its wandb run.
"""

from __future__ import annotations

import netrc
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from mpcl.config import Config, to_dict


def api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = (os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(setting: str) -> str:
    if setting != "auto":
        return setting
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env in ("dryrun",):
        return "offline"
    return "online" if api_key_configured() else "offline"


class WandbRun:
    def __init__(self, run):
        self.run = run

    @classmethod
    def start(cls, cfg: Config, out: Path, group: str | None = None) -> WandbRun | None:
        mode = resolve_mode(cfg.tracking.wandb)
        if mode == "disabled":
            return None
        try:
            import wandb
        except ImportError:
            print("wandb is not installed: tracking only in metrics.jsonl", file=sys.stderr)
            return None
        out.mkdir(parents=True, exist_ok=True)
        id_file = out / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        t = cfg.tracking
        try:
            run = wandb.init(project=t.project, entity=t.entity or None, name=t.name or out.name,
                             group=group or os.environ.get("MPCL_WANDB_GROUP") or None,
                             config=to_dict(cfg), dir=str(out), mode=mode, id=run_id, resume="allow",
                             settings=wandb.Settings(console="off", silent=True))
        except Exception as e:  # tracking must never stop training
            print(f"wandb ({mode}) could not start, tracking only in metrics.jsonl: "
                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
            return None
        return cls(run)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        try:
            self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        except Exception as e:
            print(f"wandb log failed: {type(e).__name__}", file=sys.stderr)

    def finish(self) -> None:
        try:
            self.run.finish()
        except Exception:
            pass
