"""The pieces every report page is made of: the self-contained HTML page (inline CSS, images
inlined as base64 PNG, no JavaScript, no network), its tables and numbers, and matplotlib
figures saved as PNG beside the page."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from mpcl.files import write_atomic


class ReportError(RuntimeError):
    """Nothing to report on (one line)."""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {"complete": "tab:blue", "pruned": "tab:orange", "failed": "tab:red", "running": "tab:gray"}


def save_png(fig, out_dir: Path, name: str) -> tuple[str, str]:
    """``fig`` as ``out_dir/name.png`` (replaced whole; a full disk is one line) and inline."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    png = buffer.getvalue()
    write_atomic(out_dir / f"{name}.png", lambda f: f.write(png), needs=len(png))
    return name, base64.b64encode(png).decode()


def curves(runs: dict[str, list[dict]], key: str, title: str, out_dir: Path, name: str,
           states: dict[str, str] | None = None):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for label, rows in runs.items():
        pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if not pts:
            continue
        state = (states or {}).get(label, "complete")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"{label} ({state})",
                color=None if states is None else None, linestyle="--" if state == "pruned" else "-")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if drawn <= 12:
        ax.legend(fontsize=7)
    return save_png(fig, out_dir, name)


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f0f0}tr.complete td:nth-child(2){color:#1f77b4}tr.pruned td:nth-child(2){color:#e67e00}
tr.failed td:nth-child(2){color:#c0392b}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
img{max-width:100%;margin:4px}h2{margin-top:1.6em;border-bottom:1px solid #ddd}.note{color:#666}"""


def img_tag(plot) -> str:
    if plot is None:
        return ""
    name, data = plot
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def html_page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n")


def html_table(head: list[str], rows: list[list[Any]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" +
            "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows) +
            "</table>")
