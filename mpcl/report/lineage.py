"""The lineage part of a PBT sweep's page: for each trial, the trials its state was cloned
from (and after how many epochs) and the knobs in effect at each epoch, one plot per knob."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from mpcl.report.page import img_tag, pyplot, save_png


def _schedule_plot(rows: list[dict[str, Any]], knob: str, out_dir: Path, name: str):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for r in rows:
        points = [(s["epoch"], s[knob]) for s in r.get("schedule", []) if knob in s]
        if points:
            ax.step([p[0] for p in points], [p[1] for p in points], where="mid", marker="o", ms=3,
                    label=str(r["trial_id"]))
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(knob)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return save_png(fig, out_dir, name)


def lineage_section(rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Nothing for a sweep without a knob schedule (asha, none)."""
    if not any(r.get("schedule") for r in rows):
        return []
    trs = []
    for r in rows:
        clones = "; ".join(f"from {c['from']} after epoch {c['epochs_done']}" for c in r.get("clones", []))
        trs.append(f"<tr><td>{html.escape(str(r['trial_id']))}</td>"
                   f"<td>{html.escape(clones or 'its own state throughout')}</td></tr>")
    body = ["<h2>Lineage (PBT)</h2><table><tr><th>trial</th><th>cloned</th></tr>" + "".join(trs) + "</table>",
            "<h3>Knob schedule: the values in effect at each epoch</h3>"]
    knobs = sorted({k for r in rows for s in r.get("schedule", []) for k in s if k != "epoch"})
    for i, knob in enumerate(knobs):
        body.append(img_tag(_schedule_plot(rows, knob, out_dir, f"schedule_{i}_{knob.replace('.', '_')}")))
    return body
