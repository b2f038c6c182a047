"""A sweep's confirmation stage (``confirm: {top_k: 3, seeds: 3}`` in the sweep file).

A search ranks trials on one seed each, cut short by ASHA: its best is partly luck. After the
search, the ``top_k`` best complete trials and the baseline (the first ``points`` entry) train
again with ``seeds`` fresh seeds at the full budget, as independent runs (no scheduler) that
share the cluster. ``results.json`` then gains ``confirm``: per configuration the objective's
mean and sd over the seeds and its difference to the baseline with a 95 % interval paired by
seed; the winner is the best confirmed mean, and the verdict says whether it beats the
baseline beyond the noise (the interval excludes 0).

A sweep with several objectives confirms every Pareto point (not the ``top_k``) and the
baseline: per configuration each objective's mean and sd over the seeds; no winner (the
points trade one objective for another).

Runs live in ``<sweep>/confirm/<label>/seed<k>/`` (label: the trial id, or ``baseline``); a
rerun (``run.py sweep --resume``) keeps the finished ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mpcl.launch import LaunchError
from mpcl.launch.repeat import run_all
from mpcl.stats import paired_difference, summarize
from mpcl.tracking.sweep_results import RESULTS_FILE, write_results

BASELINE = "baseline"


def parse_confirm(path, value: Any, has_points: bool) -> dict[str, int] | None:
    """The sweep file's ``confirm`` value, validated (one-line ``LaunchError``)."""
    if value is None:
        return None
    usage = "confirm: expected {top_k: N, seeds: N} with integers N >= 1"
    if not isinstance(value, dict) or set(value) != {"top_k", "seeds"}:
        raise LaunchError(f"{path}: {usage} (got {value!r})")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value.values()):
        raise LaunchError(f"{path}: {usage} (got {value!r})")
    if not has_points:
        raise LaunchError(f"{path}: confirm needs a points entry: the first one is the baseline")
    return {"top_k": value["top_k"], "seeds": value["seeds"]}


def _matches(params: dict[str, Any], point: dict[str, Any]) -> bool:
    return all(k in params and params[k] == v for k, v in point.items())


def candidates(spec, rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(label, params) of the baseline, then the top_k complete trials (rows are best first),
    or with several objectives every Pareto point; a chosen trial that is the baseline's point
    is not trained twice."""
    point = spec.points[0]
    base_row = next((r for r in rows if _matches(r["params"], point)), None)
    baseline = dict(base_row["params"]) if base_row else {**spec.example_params(), **point}
    out = [(BASELINE, baseline)]
    complete = [r for r in rows if r["state"] == "complete" and r["objective"] is not None]
    if spec.multi_objective:
        complete = [r for r in complete if r.get("pareto")]
    for r in complete:
        if len(out) > spec.confirm["top_k"] and not spec.multi_objective:
            break
        if not _matches(r["params"], point):
            out.append((str(r["trial_id"]), dict(r["params"])))
    return out


def verdict(confirm: dict[str, Any], mode: str) -> str:
    metric, winner = confirm["metric"], confirm["winner"]
    best = next(c for c in confirm["configs"] if c["label"] == winner)
    if winner == BASELINE:
        return (f"The baseline has the best confirmed mean {metric} ({best['summary']['mean']:.4g}): "
                "no searched configuration beats it.")
    d = best["difference"]
    head = f"Winner {winner}: {metric} {best['summary']['mean']:.4g}, {d['mean']:+.4g} against the baseline"
    if d["low"] is None:
        return f"{head}; one paired seed gives no interval: not shown to beat the baseline beyond the noise."
    better = d["low"] > 0 if mode == "max" else d["high"] < 0
    ci = f"95 % interval [{d['low']:+.4g}, {d['high']:+.4g}]"
    if better:
        return f"{head}, {ci} excludes 0: it beats the baseline beyond the noise."
    return f"{head}, {ci} includes 0: not beyond the noise of {confirm['seeds']} seed(s)."


def run_confirm(spec, sweep_dir: Path, rows: list[dict[str, Any]], address: str | None = None) -> dict[str, Any]:
    """Trains the confirmation runs (Ray, already initialised by the sweep), adds ``confirm``
    to ``results.json`` and returns it."""
    top_k, n_seeds = spec.confirm["top_k"], spec.confirm["seeds"]
    chosen = candidates(spec, rows)
    search_seed = spec.config(chosen[0][1]).train.seed
    seeds = [search_seed + 1 + i for i in range(n_seeds)]  # fresh: not the search's seed
    runs, owners = [], []
    for label, params in chosen:
        for s in seeds:
            runs.append(spec.config({**params, "train.seed": s}, out=str(sweep_dir / "confirm" / label / f"seed{s}")))
            owners.append(label)
    which = "Pareto" if spec.multi_objective else "top"
    print(f"confirm: {len(chosen) - 1} {which} configuration(s) and the baseline, seeds {seeds}, "
          f"{spec.epochs} epochs each ({len(runs)} runs)", file=sys.stderr, flush=True)
    results = run_all(runs, use_ray=True, address=address, log_dir=sweep_dir)
    if spec.multi_objective:
        return _write_confirm(sweep_dir, _pareto_confirm(spec, chosen, runs, owners, results, seeds))
    values: dict[str, dict[int, float]] = {label: {} for label, _ in chosen}
    for cfg, label, result in zip(runs, owners, results):
        value = (result or {}).get("metrics", {}).get(spec.metric)
        if isinstance(value, (int, float)):
            values[label][cfg.train.seed] = float(value)
    configs = []
    for label, params in chosen:
        configs.append({
            "label": label, "params": params, "values": values[label],
            "summary": summarize(list(values[label].values())).as_dict(),
            "difference": paired_difference(values[BASELINE], values[label]).as_dict(),
            "run_dirs": [r.out for r, o in zip(runs, owners) if o == label],
        })
    sign = 1 if spec.mode == "max" else -1
    scored = [c for c in configs if c["summary"]["mean"] is not None]
    confirm = {"metric": spec.metric, "top_k": top_k, "seeds": n_seeds, "seed_values": seeds,
               "baseline": BASELINE, "configs": configs,
               "winner": max(scored, key=lambda c: sign * c["summary"]["mean"])["label"] if scored else None}
    confirm["verdict"] = verdict(confirm, spec.mode) if confirm["winner"] else "no confirmation run finished"
    return _write_confirm(sweep_dir, confirm)


def _pareto_confirm(spec, chosen, runs, owners, results, seeds: list[int]) -> dict[str, Any]:
    """The confirmation of several objectives: per configuration each one's values by seed,
    and their mean and sd."""
    configs = []
    for label, params in chosen:
        mine = [(cfg.train.seed, (result or {}).get("metrics", {}))
                for cfg, owner, result in zip(runs, owners, results) if owner == label]
        objectives = {}
        for metric, _ in spec.objectives:
            values = {seed: float(m[metric]) for seed, m in mine if isinstance(m.get(metric), (int, float))}
            objectives[metric] = {"values": values, "summary": summarize(list(values.values())).as_dict()}
        configs.append({"label": label, "params": params, "objectives": objectives,
                        "run_dirs": [r.out for r, o in zip(runs, owners) if o == label]})
    return {"metric": spec.metric, "objectives": [{"metric": m, "mode": mode} for m, mode in spec.objectives],
            "seeds": len(seeds), "seed_values": seeds, "baseline": BASELINE, "configs": configs, "winner": None,
            "verdict": f"{len(chosen) - 1} Pareto point(s) and the baseline on {len(seeds)} fresh seed(s): "
                       "each objective's mean ± sd per configuration"}


def _write_confirm(sweep_dir: Path, confirm: dict[str, Any]) -> dict[str, Any]:
    """Adds ``confirm`` to ``results.json``; returns it."""
    print(f"confirm: {confirm['verdict']}", file=sys.stderr, flush=True)
    path = sweep_dir / RESULTS_FILE
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary["confirm"] = confirm
    write_results(sweep_dir, summary)
    return confirm
