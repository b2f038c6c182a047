"""What a sweep leaves in its directory, read by the sweep itself (``--resume``, the
confirmation stage) and by the report: ``results.json`` (the trials as rows, best first, and
the confirmation stage's summary) and the Optuna study (``optuna.db`` unless ``--storage``
names another database).

A row: ``trial_id``, ``state`` (complete | pruned | interrupted | failed), ``reason``,
``params``, ``objective``, ``epochs_done``, ``run_dir``. A sweep with several objectives adds
``objectives`` (each metric's value; ``objective`` is the first's) and ``pareto`` (whether the
trial is on the Pareto front); its summary adds ``objectives`` ([{metric, mode}]) and
``pareto`` (the front's trial ids).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from mpcl.tracking import write_json

RESULTS_FILE = "results.json"
STUDY_FILE = "optuna.db"
STATE_ORDER = {"complete": 0, "pruned": 1, "interrupted": 2, "failed": 3}


def storage_url(sweep_dir: str | os.PathLike) -> str:
    """The SQLite URL of the study kept in ``sweep_dir`` (what ``optuna-dashboard`` opens)."""
    return f"sqlite:///{(Path(sweep_dir) / STUDY_FILE).resolve()}"


def open_study(storage: str, name: str | None = None):
    """The Optuna study ``name`` in ``storage`` (with no name: the storage's first study), or
    None when there is no such study or no readable storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        names = optuna.get_all_study_names(storage)
        if name is None and names:
            name = names[0]
        return optuna.load_study(study_name=name, storage=storage) if name in names else None
    except Exception:  # an unreadable or foreign database holds no study of ours
        return None


def sort_rows(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Complete trials first, best objective first within a state (``mode``: max | min)."""
    sign = -1 if mode == "max" else 1
    return sorted(rows, key=lambda r: (STATE_ORDER.get(r["state"], 4),
                                       sign * r["objective"] if r["objective"] is not None else math.inf,
                                       str(r["trial_id"])))


def pareto_front(points: list[list[float]], modes: list[str]) -> list[int]:
    """The indices of the non-dominated ``points``: no other point is at least as good in every
    objective and better in one (``modes``: max | min per objective)."""
    signed = [[v if mode == "max" else -v for v, mode in zip(p, modes)] for p in points]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, p in enumerate(signed) if not any(dominates(q, p) for q in signed)]


def mark_pareto(summary: dict[str, Any]) -> None:
    """Sets ``summary["pareto"]``, the trial ids of the complete rows on the Pareto front of
    ``summary["objectives"]`` ([{metric, mode}]), and each row's ``pareto``."""
    metrics = [o["metric"] for o in summary["objectives"]]
    scored = [r for r in summary["trials"] if r["state"] == "complete"
              and all(isinstance(r["objectives"].get(m), (int, float)) for m in metrics)]
    front = pareto_front([[r["objectives"][m] for m in metrics] for r in scored],
                         [o["mode"] for o in summary["objectives"]])
    summary["pareto"] = [scored[i]["trial_id"] for i in front]
    for r in summary["trials"]:
        r["pareto"] = r["trial_id"] in summary["pareto"]


def format_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The rows as a plain-text table (``run.py sweep`` prints it); rows of several objectives
    show each one's value and ``*`` on the Pareto front."""
    keys = sorted({k for r in rows for k in r["params"]})
    metrics = list(rows[0]["objectives"]) if rows and "objectives" in rows[0] else []
    head = ["trial", "state", *(metrics + ["pareto"] if metrics else [metric]), "epochs", *keys, "reason"]
    body = []
    for r in rows:
        values = [r["objectives"][m] for m in metrics] if metrics else [r["objective"]]
        objs = ["" if v is None else f"{v:.4g}" for v in values] + (["*" if r["pareto"] else ""] if metrics else [])
        vals = [f"{r['params'].get(k):.4g}" if isinstance(r["params"].get(k), float) else str(r["params"].get(k, ""))
                for k in keys]
        body.append([str(r["trial_id"]), r["state"], *objs, str(r["epochs_done"]), *vals, r["reason"][:60]])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(b) for b in body)])


def write_results(sweep_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    path = Path(sweep_dir) / RESULTS_FILE
    write_json(path, summary)
    return path


def confirmed_best(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The confirmation stage's winner as a trial row (for best_config.yaml), or None without a stage."""
    confirm = summary.get("confirm") or {}
    winner = next((c for c in confirm.get("configs", []) if c["label"] == confirm.get("winner")), None)
    if winner is None:
        return None
    return {"trial_id": winner["label"], "state": "complete", "objective": winner["summary"]["mean"],
            "params": winner["params"], "run_dir": winner["run_dirs"][0],
            "note": f"confirmed mean over {winner['summary']['n']} seed(s)"}
