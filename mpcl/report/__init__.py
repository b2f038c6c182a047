"""The results dashboard: ``run.py report DIR [--out FILE]``.

One self-contained HTML file (plots inlined as base64 PNG, inline CSS, no JavaScript, no
network) for a sweep directory (``results.json`` and/or ``optuna.db``) or a single run
directory (``metrics.jsonl``); the same plots are written as PNG files beside it, plus
``best_config.yaml`` for a sweep.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from mpcl.tracking import read_metrics


class ReportError(RuntimeError):
    """Nothing to report on (one line)."""


# -- reading --------------------------------------------------------------------------------

def _study(sweep_dir: Path, name: str | None):
    db = sweep_dir / "optuna.db"
    if not db.is_file():
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    names = optuna.get_all_study_names(storage)
    if not names:
        return None
    return optuna.load_study(study_name=name if name in names else names[0], storage=storage)


def load_sweep_results(sweep_dir: Path) -> dict[str, Any]:
    """results.json when the sweep finished; otherwise the trials as the study holds them."""
    path = sweep_dir / "results.json"
    if path.is_file():
        summary = json.loads(path.read_text())
    else:
        spec = yaml.safe_load((sweep_dir / "sweep.yaml").read_text()) if (sweep_dir / "sweep.yaml").is_file() else {}
        obj = spec.get("objective") or {}
        summary = {"name": spec.get("name", sweep_dir.name), "metric": obj.get("metric", "val/knn_top1"),
                   "mode": obj.get("mode", "max"), "epochs": None, "trials": None}
    study = _study(sweep_dir, summary.get("name"))
    summary["study"] = study
    if summary.get("trials") is None:
        if study is None:
            raise ReportError(f"{sweep_dir}: neither results.json nor optuna.db: not a sweep directory")
        states = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
                  "WAITING": "waiting"}
        rows = []
        for t in study.trials:
            tid = t.user_attrs.get("ray_trial_id", f"optuna-{t.number}")
            rows.append({"trial_id": tid, "state": states.get(t.state.name, t.state.name.lower()),
                         "reason": t.user_attrs.get("reason", ""), "params": t.params, "objective": t.value,
                         "epochs_done": max(t.intermediate_values, default=0),
                         "run_dir": str(sweep_dir / "trials" / tid)})
        from mpcl.launch.sweep import sort_rows

        summary["trials"] = sort_rows(rows, summary["mode"])
    return summary


# -- plots ----------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {"complete": "tab:blue", "pruned": "tab:orange", "failed": "tab:red", "running": "tab:gray"}


def _save(fig, out_dir: Path, name: str) -> tuple[str, str]:
    path = out_dir / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return name, base64.b64encode(path.read_bytes()).decode()


def _curves(runs: dict[str, list[dict]], key: str, title: str, out_dir: Path, name: str,
            states: dict[str, str] | None = None):
    plt = _plt()
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
    return _save(fig, out_dir, name)


def _scatter(rows: list[dict], param: str, metric: str, out_dir: Path, name: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    drawn = 0
    for state in ("complete", "pruned"):
        pts = [(r["params"][param], r["objective"]) for r in rows
               if r["state"] == state and r["objective"] is not None and param in r["params"]]
        if pts:
            xs = [p[0] if isinstance(p[0], (int, float)) else str(p[0]) for p in pts]
            ax.scatter(xs, [p[1] for p in pts], color=COLORS[state], label=state, s=25)
            drawn += len(pts)
    if not drawn:
        plt.close(fig)
        return None
    vals = [r["params"][param] for r in rows if param in r["params"]]
    if vals and all(isinstance(v, (int, float)) and v > 0 for v in vals) and max(vals) / min(vals) > 50:
        ax.set_xscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out_dir, name)


def _importances(study, out_dir: Path):
    """(png, table) of Optuna's parameter importances, or (None, reason)."""
    from optuna.trial import TrialState

    if study is None:
        return None, "no Optuna study in this directory"
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return None, f"needs at least 2 complete trials (this sweep has {len(complete)})"
    import optuna

    try:
        imp = optuna.importance.get_param_importances(study)
    except Exception as e:  # e.g. a parameter that never varied
        return None, f"Optuna could not compute them ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if not imp:
        return None, "no parameter varied"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.4 * len(imp)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA)")
    return _save(fig, out_dir, "importances"), imp


# -- HTML -----------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f0f0}tr.complete td:nth-child(2){color:#1f77b4}tr.pruned td:nth-child(2){color:#e67e00}
tr.failed td:nth-child(2){color:#c0392b}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
img{max-width:100%;margin:4px}h2{margin-top:1.6em;border-bottom:1px solid #ddd}.note{color:#666}"""


def _img(plot) -> str:
    if plot is None:
        return ""
    name, data = plot
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n")


def best_config(summary: dict[str, Any], sweep_dir: Path) -> tuple[dict | None, str | None]:
    best = next((r for r in summary["trials"] if r["state"] == "complete" and r["objective"] is not None), None)
    if best is None:
        return None, None
    cfg_path = Path(best["run_dir"]) / "config.yaml"
    if not cfg_path.is_file():
        return best, None
    tree = yaml.safe_load(cfg_path.read_text())
    tree["out"] = f"runs/{summary.get('name', sweep_dir.name)}_best"
    header = (f"# best trial {best['trial_id']} of sweep {summary.get('name')}: "
              f"{summary['metric']} = {best['objective']:.4g}\n"
              f"# python run.py train --config best_config.yaml\n")
    return best, header + yaml.safe_dump(tree, sort_keys=False)


def sweep_report(sweep_dir: Path, out_file: Path) -> Path:
    summary = load_sweep_results(sweep_dir)
    out_dir = out_file.parent
    rows, metric = summary["trials"], summary["metric"]
    params = sorted({k for r in rows for k in r["params"]})
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed")}
    body = [f"<p>{len(rows)} trials: {counts['complete']} complete, {counts['pruned']} pruned, "
            f"{counts['failed']} failed. Objective: <b>{html.escape(metric)}</b> ({summary['mode']}). "
            f"Directory: <code>{html.escape(str(sweep_dir))}</code>. Optuna study: "
            f"<code>optuna-dashboard sqlite:///{html.escape(str((sweep_dir / 'optuna.db').resolve()))}</code></p>"]
    # the table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", "state", metric, "epochs", *params, "reason"])
    trs = []
    for r in rows:
        cells = [r["trial_id"], r["state"], "" if r["objective"] is None else r["objective"], r["epochs_done"],
                 *[r["params"].get(p, "") for p in params], r.get("reason", "")]
        trs.append(f"<tr class='{html.escape(r['state'])}'>" + "".join(f"<td>{_fmt(c)}</td>" for c in cells) + "</tr>")
    body.append(f"<h2>Trials</h2><table><tr>{head}</tr>{''.join(trs)}</table>")
    # best config
    best, best_yaml = best_config(summary, sweep_dir)
    body.append("<h2>Best configuration</h2>")
    if best_yaml:
        (out_dir / "best_config.yaml").write_text(best_yaml)
        body.append(f"<p>Trial <b>{html.escape(str(best['trial_id']))}</b>, {html.escape(metric)} = "
                    f"{best['objective']:.4g}. Saved as <code>best_config.yaml</code> beside this page.</p>"
                    f"<pre>{html.escape(best_yaml)}</pre>")
    else:
        body.append("<p class='note'>No complete trial yet.</p>")
    # curves
    runs = {str(r["trial_id"]): read_metrics(r["run_dir"]) for r in rows}
    states = {str(r["trial_id"]): r["state"] for r in rows}
    body.append("<h2>Learning curves</h2>")
    for key, name in ((metric, "curves_objective"), ("train/loss", "curves_loss")):
        body.append(_img(_curves(runs, key, f"{key} per trial", out_dir, name, states)))
    # objective vs parameters
    body.append(f"<h2>{html.escape(metric)} against each searched parameter</h2>")
    for i, p in enumerate(params):
        body.append(_img(_scatter(rows, p, metric, out_dir, f"param_{i}_{p.replace('.', '_')}")))
    # importances
    body.append("<h2>Parameter importances (Optuna)</h2>")
    plot, imp = _importances(summary.get("study"), out_dir)
    if plot is None:
        body.append(f"<p class='note'>Not available: {html.escape(imp)}.</p>")
    else:
        body.append(_img(plot) + "<table><tr><th>parameter</th><th>importance</th></tr>" +
                    "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in imp.items()) + "</table>")
    out_file.write_text(_page(f"Sweep {summary.get('name', sweep_dir.name)}", body))
    return out_file


def run_report(run_dir: Path, out_file: Path) -> Path:
    rows = read_metrics(run_dir)
    out_dir = out_file.parent
    keys = ["epoch", "train/loss", "val/knn_top1", "val/online_top1", "val/align", "val/uniform", "lr", "time/epoch_s"]
    keys = [k for k in keys if any(k in r for r in rows)]
    body = [f"<p>Run directory <code>{html.escape(str(run_dir))}</code>, {len(rows)} epochs.</p>"]
    body.append("<h2>Learning curves</h2>")
    for key, name in (("train/loss", "loss"), ("val/knn_top1", "knn_top1"), ("val/online_top1", "online_top1")):
        body.append(_img(_curves({run_dir.name: rows}, key, key, out_dir, name)))
    body.append("<h2>Epochs</h2><table><tr>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>" +
                "".join("<tr>" + "".join(f"<td>{_fmt(r.get(k, ''))}</td>" for k in keys) + "</tr>" for r in rows) +
                "</table>")
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        body.append(f"<h2>Configuration</h2><pre>{html.escape(cfg.read_text())}</pre>")
    out_file.write_text(_page(f"Run {run_dir.name}", body))
    return out_file


def write_report(directory: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    d = Path(directory)
    if not d.is_dir():
        raise ReportError(f"{d}: no such directory")
    out_file = Path(out) if out else d / "report" / "index.html"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if (d / "results.json").is_file() or (d / "optuna.db").is_file():
        return sweep_report(d, out_file)
    if (d / "metrics.jsonl").is_file():
        return run_report(d, out_file)
    if (d / "dynamics.json").is_file():
        from mpcl.dynamics.page import write_page

        return write_page(d, out_file)
    raise ReportError(f"{d}: neither a sweep (results.json, optuna.db), a run (metrics.jsonl) nor a "
                      "dynamics (dynamics.json) directory")


__all__ = ["ReportError", "write_report", "load_sweep_results"]
