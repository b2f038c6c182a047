"""The sweep page: the trials' table, the best (or confirmed) configuration saved as
``best_config.yaml``, learning curves, the objective against each searched parameter, and
Optuna's parameter importances. Read from ``results.json``, or from the study alone while the
sweep runs."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import yaml

from mpcl.report.comparison import confirm_section
from mpcl.report.lineage import lineage_section
from mpcl.report.page import COLORS, ReportError, curves, fmt, html_page, img_tag, pyplot, save_png
from mpcl.tracking import read_metrics
from mpcl.tracking.sweep_results import RESULTS_FILE, STUDY_FILE, confirmed_best, open_study, sort_rows, storage_url
from mpcl.files import write_text_atomic

# the study's trial states, as results.json names them
STUDY_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
                "WAITING": "waiting"}


def _study(sweep_dir: Path, name: str | None):
    """The study in ``sweep_dir/optuna.db``: the one named ``name``, else the first there."""
    if not (sweep_dir / STUDY_FILE).is_file():
        return None
    url = storage_url(sweep_dir)
    return open_study(url, name) or open_study(url)


def _read_results(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
    except ValueError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from None
    if not (isinstance(summary, dict) and {"metric", "mode"} <= summary.keys()
            and isinstance(summary.get("trials"), list) and all(
                isinstance(r, dict) and {"trial_id", "state", "params", "objective", "run_dir"} <= r.keys()
                for r in summary["trials"])):
        raise ReportError(f"{path}: not a sweep's results (expected metric, mode and trials, each trial "
                          "with trial_id, state, params, objective, run_dir)")
    return summary


def _study_rows(study, sweep_dir: Path) -> list[dict[str, Any]]:
    """The study's trials as rows of results.json (a sweep still running has no results.json)."""
    rows = []
    for t in study.trials:
        tid = t.user_attrs.get("ray_trial_id", f"optuna-{t.number}")
        rows.append({"trial_id": tid, "state": STUDY_STATES.get(t.state.name, t.state.name.lower()),
                     "reason": t.user_attrs.get("reason", ""), "params": t.params, "objective": t.value,
                     "epochs_done": max(t.intermediate_values, default=0),
                     "run_dir": str(sweep_dir / "trials" / tid)})
    return rows


def load_sweep_results(sweep_dir: Path) -> dict[str, Any]:
    """results.json when the sweep finished; otherwise the trials as the study holds them."""
    path = sweep_dir / RESULTS_FILE
    if path.is_file():
        summary = _read_results(path)
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
        summary["trials"] = sort_rows(_study_rows(study, sweep_dir), summary["mode"])
    return summary


def _scatter(rows: list[dict], param: str, metric: str, out_dir: Path, name: str):
    plt = pyplot()
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
    return save_png(fig, out_dir, name)


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
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.4 * len(imp)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA)")
    return save_png(fig, out_dir, "importances"), imp


def best_config(summary: dict[str, Any], sweep_dir: Path) -> tuple[dict | None, str | None]:
    """The confirmed winner when the sweep has a confirmation stage, else the best trial."""
    best = confirmed_best(summary) or next(
        (r for r in summary["trials"] if r["state"] == "complete" and r["objective"] is not None), None)
    if best is None:
        return None, None
    cfg_path = Path(best["run_dir"]) / "config.yaml"
    if not cfg_path.is_file():
        return best, None
    tree = yaml.safe_load(cfg_path.read_text())
    tree["out"] = f"runs/{summary.get('name', sweep_dir.name)}_best"
    header = (f"# best trial {best['trial_id']} of sweep {summary.get('name')}: "
              f"{summary['metric']} = {best['objective']:.4g}{' (' + best['note'] + ')' if best.get('note') else ''}\n"
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
            f"<code>optuna-dashboard {html.escape(storage_url(sweep_dir))}</code></p>"]
    # the table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", "state", metric, "epochs", *params, "reason"])
    trs = []
    for r in rows:
        cells = [r["trial_id"], r["state"], "" if r["objective"] is None else r["objective"], r["epochs_done"],
                 *[r["params"].get(p, "") for p in params], r.get("reason", "")]
        trs.append(f"<tr class='{html.escape(r['state'])}'>" + "".join(f"<td>{fmt(c)}</td>" for c in cells) + "</tr>")
    body.append(f"<h2>Trials</h2><table><tr>{head}</tr>{''.join(trs)}</table>")
    if summary.get("confirm"):
        body += confirm_section(summary["confirm"])
    body += lineage_section(rows, out_dir)
    # best config
    best, best_yaml = best_config(summary, sweep_dir)
    body.append("<h2>Best configuration</h2>")
    if best_yaml:
        write_text_atomic(out_dir / "best_config.yaml", best_yaml)
        body.append(f"<p>Trial <b>{html.escape(str(best['trial_id']))}</b>, {html.escape(metric)} = "
                    f"{best['objective']:.4g}{html.escape(' (' + best['note'] + ')' if best.get('note') else '')}. "
                    "Saved as <code>best_config.yaml</code> beside this page.</p>"
                    f"<pre>{html.escape(best_yaml)}</pre>")
    else:
        body.append("<p class='note'>No complete trial yet.</p>")
    # curves
    runs = {str(r["trial_id"]): read_metrics(r["run_dir"]) for r in rows}
    states = {str(r["trial_id"]): r["state"] for r in rows}
    body.append("<h2>Learning curves</h2>")
    for key, name in ((metric, "curves_objective"), ("train/loss", "curves_loss")):
        body.append(img_tag(curves(runs, key, f"{key} per trial", out_dir, name, states)))
    # objective vs parameters
    body.append(f"<h2>{html.escape(metric)} against each searched parameter</h2>")
    for i, p in enumerate(params):
        body.append(img_tag(_scatter(rows, p, metric, out_dir, f"param_{i}_{p.replace('.', '_')}")))
    # importances
    body.append("<h2>Parameter importances (Optuna)</h2>")
    plot, imp = _importances(summary.get("study"), out_dir)
    if plot is None:
        body.append(f"<p class='note'>Not available: {html.escape(imp)}.</p>")
    else:
        body.append(img_tag(plot) + "<table><tr><th>parameter</th><th>importance</th></tr>" +
                    "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in imp.items()) + "</table>")
    write_text_atomic(out_file, html_page(f"Sweep {summary.get('name', sweep_dir.name)}", body))
    return out_file
