"""The results dashboard: ``run.py report DIR [--out FILE]``.

One self-contained HTML file (plots inlined as base64 PNG, inline CSS, no JavaScript, no
network) for a sweep directory (``results.json`` and/or ``optuna.db``) or a single run
directory (``metrics.jsonl``, and a 2-D map of its validation features when the run kept
``embedding.npz``); the same plots are written as PNG files beside it, plus
``best_config.yaml`` for a sweep.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from mpcl.report.comparison import reproduce_report
from mpcl.report.dynamics import write_page as dynamics_report
from mpcl.report.embedding import embedding_section
from mpcl.report.page import ReportError, curves, fmt, html_page, img_tag
from mpcl.report.sweep import sweep_report
from mpcl.tracking import SUMMARY_KEYS, read_metrics
from mpcl.files import write_text_atomic


def run_report(run_dir: Path, out_file: Path) -> Path:
    rows = read_metrics(run_dir)
    out_dir = out_file.parent
    keys = [k for k in ("epoch", *SUMMARY_KEYS) if any(k in r for r in rows)]
    body = [f"<p>Run directory <code>{html.escape(str(run_dir))}</code>, {len(rows)} epochs.</p>"]
    body.append("<h2>Learning curves</h2>")
    for key, name in (("train/loss", "loss"), ("val/knn_top1", "knn_top1"), ("val/online_top1", "online_top1")):
        body.append(img_tag(curves({run_dir.name: rows}, key, key, out_dir, name)))
    body.extend(embedding_section(run_dir, out_dir))
    body.append("<h2>Epochs</h2><table><tr>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>" +
                "".join("<tr>" + "".join(f"<td>{fmt(r.get(k, ''))}</td>" for k in keys) + "</tr>" for r in rows) +
                "</table>")
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        body.append(f"<h2>Configuration</h2><pre>{html.escape(cfg.read_text())}</pre>")
    write_text_atomic(out_file, html_page(f"Run {run_dir.name}", body))
    return out_file


def write_report(directory: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    d = Path(directory)
    if not d.is_dir():
        raise ReportError(f"{d}: no such directory")
    out_file = Path(out) if out else d / "report" / "index.html"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if (d / "reproduce.json").is_file():
        return reproduce_report(d, out_file)
    if (d / "results.json").is_file() or (d / "optuna.db").is_file():
        return sweep_report(d, out_file)
    if (d / "metrics.jsonl").is_file():
        return run_report(d, out_file)
    if (d / "dynamics.json").is_file():
        return dynamics_report(d, out_file)
    raise ReportError(f"{d}: neither a sweep (results.json, optuna.db), a run (metrics.jsonl) nor a "
                      "dynamics (dynamics.json) directory")


__all__ = ["ReportError", "write_report"]
