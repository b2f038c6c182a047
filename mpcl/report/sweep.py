"""The sweep page: the trials' table, the best (or confirmed) configuration saved as
``best_config.yaml``, learning curves, the objective against each searched parameter, and
Optuna's parameter importances. Read from ``results.json``, or from the study alone while the
sweep runs. A sweep with several objectives draws its Pareto front instead of a best
configuration and saves each Pareto point's config in ``best_configs/``."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import yaml

from mpcl.files import write_text_atomic
from mpcl.report.comparison import confirm_section
from mpcl.report.lineage import lineage_section
from mpcl.report.page import COLORS, ReportError, curves, fmt, html_page, html_table, img_tag, pyplot, save_png
from mpcl.tracking import read_metrics
from mpcl.tracking.sweep_results import (
    RESULTS_FILE,
    STUDY_FILE,
    confirmed_best,
    mark_pareto,
    open_study,
    sort_rows,
    storage_url,
)

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


def _study_rows(study, sweep_dir: Path, metrics: list[str]) -> list[dict[str, Any]]:
    """The study's trials as rows of results.json (a sweep still running has no results.json);
    ``metrics``: the objectives' names when there are several."""
    rows = []
    for t in study.trials:
        tid = t.user_attrs.get("ray_trial_id", f"optuna-{t.number}")
        values = t.values or [None] * max(len(metrics), 1)
        rows.append({"trial_id": tid, "state": STUDY_STATES.get(t.state.name, t.state.name.lower()),
                     "reason": t.user_attrs.get("reason", ""), "params": t.params, "objective": values[0],
                     "epochs_done": max(t.intermediate_values, default=0),
                     "run_dir": str(sweep_dir / "trials" / tid)})
        if metrics:
            rows[-1]["objectives"] = dict(zip(metrics, values))
    return rows


def load_sweep_results(sweep_dir: Path) -> dict[str, Any]:
    """results.json when the sweep finished; otherwise the trials as the study holds them."""
    path = sweep_dir / RESULTS_FILE
    if path.is_file():
        summary = _read_results(path)
    else:
        spec = yaml.safe_load((sweep_dir / "sweep.yaml").read_text()) if (sweep_dir / "sweep.yaml").is_file() else {}
        objectives = spec.get("objective") or {}
        obj = objectives[0] if isinstance(objectives, list) else objectives
        summary = {"name": spec.get("name", sweep_dir.name), "metric": obj.get("metric", "val/knn_top1"),
                   "mode": obj.get("mode", "max"), "epochs": None, "trials": None}
        if isinstance(objectives, list) and len(objectives) > 1:
            summary["objectives"] = [{"metric": o["metric"], "mode": o.get("mode", "max")} for o in objectives]
    study = _study(sweep_dir, summary.get("name"))
    summary["study"] = study
    if summary.get("trials") is None:
        if study is None:
            raise ReportError(f"{sweep_dir}: neither results.json nor optuna.db: not a sweep directory")
        several = summary.get("objectives") or []
        summary["trials"] = sort_rows(_study_rows(study, sweep_dir, [o["metric"] for o in several]), summary["mode"])
        if several:
            mark_pareto(summary)
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
    if len(study.directions) > 1:
        return None, "the study has several objectives (optuna-dashboard shows each one's)"
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
    header = (f"# best trial {best['trial_id']} of sweep {summary.get('name')}: "
              f"{summary['metric']} = {best['objective']:.4g}{' (' + best['note'] + ')' if best.get('note') else ''}\n"
              f"# python run.py train --config best_config.yaml\n")
    return best, _trial_config_yaml(best, f"runs/{summary.get('name', sweep_dir.name)}_best", header)


def _trial_config_yaml(row: dict[str, Any], out: str, header: str) -> str | None:
    """The config a trial ran, its ``out`` replaced, under ``header``; None without config.yaml."""
    cfg_path = Path(row["run_dir"]) / "config.yaml"
    if not cfg_path.is_file():
        return None
    tree = yaml.safe_load(cfg_path.read_text())
    tree["out"] = out
    return header + yaml.safe_dump(tree, sort_keys=False)


def _objectives_text(summary: dict[str, Any]) -> str:
    objectives = summary.get("objectives") or [{"metric": summary["metric"], "mode": summary["mode"]}]
    return ", ".join(f"<b>{html.escape(o['metric'])}</b> ({o['mode']})" for o in objectives)


def _trials_table(summary: dict[str, Any], params: list[str]) -> str:
    """The trials; with several objectives a column each and the Pareto trials starred."""
    several = bool(summary.get("objectives"))
    metrics = [o["metric"] for o in summary["objectives"]] if several else [summary["metric"]]
    head = ["trial", "state", *metrics, *(["Pareto"] if several else []), "epochs", *params, "reason"]
    trs = []
    for r in summary["trials"]:
        values = [r["objectives"].get(m) for m in metrics] if several else [r["objective"]]
        cells = [r["trial_id"], r["state"], *["" if v is None else v for v in values],
                 *(["★" if r.get("pareto") else ""] if several else []), r["epochs_done"],
                 *[r["params"].get(p, "") for p in params], r.get("reason", "")]
        trs.append(f"<tr class='{html.escape(r['state'])}'>" + "".join(f"<td>{fmt(c)}</td>" for c in cells) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{''.join(trs)}</table>"


def _best_section(summary: dict[str, Any], sweep_dir: Path, out_dir: Path) -> list[str]:
    best, best_yaml = best_config(summary, sweep_dir)
    body = ["<h2>Best configuration</h2>"]
    if best_yaml:
        write_text_atomic(out_dir / "best_config.yaml", best_yaml)
        body.append(f"<p>Trial <b>{html.escape(str(best['trial_id']))}</b>, {html.escape(summary['metric'])} = "
                    f"{best['objective']:.4g}{html.escape(' (' + best['note'] + ')' if best.get('note') else '')}. "
                    "Saved as <code>best_config.yaml</code> beside this page.</p>"
                    f"<pre>{html.escape(best_yaml)}</pre>")
    else:
        body.append("<p class='note'>No complete trial yet.</p>")
    return body


def sweep_report(sweep_dir: Path, out_file: Path) -> Path:
    summary = load_sweep_results(sweep_dir)
    out_dir = out_file.parent
    rows, metric = summary["trials"], summary["metric"]
    params = sorted({k for r in rows for k in r["params"]})
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed")}
    body = [f"<p>{len(rows)} trials: {counts['complete']} complete, {counts['pruned']} pruned, "
            f"{counts['failed']} failed. Objective: {_objectives_text(summary)}. "
            f"Directory: <code>{html.escape(str(sweep_dir))}</code>. "
            + ("No Optuna study (Ray runs PBT without a searcher).</p>" if summary.get("scheduler") == "pbt" else
               f"Optuna study: <code>optuna-dashboard {html.escape(storage_url(sweep_dir))}</code></p>")]
    body.append(f"<h2>Trials</h2>{_trials_table(summary, params)}")
    if summary.get("confirm"):
        body += confirm_section(summary["confirm"])
    body += lineage_section(rows, out_dir)
    if summary.get("objectives"):
        body += pareto_section(summary, out_dir)
    else:
        body += _best_section(summary, sweep_dir, out_dir)
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


def pareto_section(summary: dict[str, Any], out_dir: Path) -> list[str]:
    """The Pareto front of a sweep with several objectives: drawn over every complete trial
    (two objectives), tabled, and each point's config saved as
    ``best_configs/pareto_<k>_<trial_id>.yaml`` beside the page."""
    metrics = [o["metric"] for o in summary["objectives"]]
    by_id = {r["trial_id"]: r for r in summary["trials"]}
    sign = -1 if summary["objectives"][0]["mode"] == "max" else 1
    front = sorted((by_id[t] for t in summary.get("pareto", []) if t in by_id),   # best first in the first
                   key=lambda r: sign * r["objectives"][metrics[0]])
    body = [f"<h2>Pareto front: {len(front)} trial(s)</h2>"]
    if not front:
        return body + ["<p class='note'>No complete trial yet.</p>"]
    if len(metrics) == 2:
        body.append(img_tag(_pareto_plot(summary, front, out_dir)))
    folder = out_dir / "best_configs"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("pareto_*.yaml"):   # an earlier report's front
        old.unlink()
    rows = []
    for k, r in enumerate(front):
        name = f"pareto_{k}_{r['trial_id']}.yaml"
        values = ", ".join(f"{m} = {r['objectives'][m]:.4g}" for m in metrics)
        text = _trial_config_yaml(r, f"runs/{summary.get('name')}_pareto_{k}",
                                  f"# Pareto point {k} of sweep {summary.get('name')}: trial {r['trial_id']}, "
                                  f"{values}\n# python run.py train --config best_configs/{name}\n")
        if text:
            write_text_atomic(folder / name, text)
        rows.append([k, r["trial_id"], *[fmt(r["objectives"][m]) for m in metrics],
                     f"best_configs/{name}" if text else "no config.yaml"])
    body.append("<p>The complete trials that no other complete trial matches or beats in every objective.</p>")
    body.append(html_table(["point", "trial", *metrics, "config"], rows))
    return body


def _pareto_plot(summary: dict[str, Any], front: list[dict[str, Any]], out_dir: Path):
    (x, x_mode), (y, y_mode) = [(o["metric"], o["mode"]) for o in summary["objectives"]]
    done = [r["objectives"] for r in summary["trials"] if r["state"] == "complete"
            and r["objectives"].get(x) is not None and r["objectives"].get(y) is not None]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([v[x] for v in done], [v[y] for v in done], color=COLORS["complete"], s=25, label="complete trials")
    line = sorted((r["objectives"] for r in front), key=lambda v: v[x])
    ax.plot([v[x] for v in line], [v[y] for v in line], "o-", color="tab:red", label="Pareto front")
    ax.set_xlabel(f"{x} ({x_mode})")
    ax.set_ylabel(f"{y} ({y_mode})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, out_dir, "pareto_front")
