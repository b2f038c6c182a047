"""The report of ``bench sweep``: what the replays and the table say about the search.

Per strategy, over search seeds (median and quartiles, nearest-rank): the true objective (table
mean over seeds at ``max_t``) of the configuration the sweep would pick, and the trial-epochs
until that pick came within 0.5 points of the grid's best mean ("never" counted). From the table
alone: Spearman's rho between each epoch's means and the means at ``max_t``, and the safe grace
period (``safe_grace_period``). Printed as text, written as an HTML page with plots beside the
table, and as a BENCHMARKS.md section."""

from __future__ import annotations

import datetime
import html
import math
from pathlib import Path
from typing import Any

from mpcl.bench.record import cpu_model, versions
from mpcl.bench.sweep_replay import Replay
from mpcl.bench.sweep_table import Table

WITHIN = 0.5   # points of the objective: "as good as the grid's best"
TOP = 5        # the configurations ASHA must keep for a grace period to be safe


def _finished(table: Table) -> list[int]:
    """The configurations every seed of which reached ``max_t`` (no divergence)."""
    return [c for c in range(len(table.configs)) if math.isfinite(table.final(c))]


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (NaN when either is constant)."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx, sy = math.sqrt(sum((a - mx) ** 2 for a in rx)), math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else math.nan


def rank_correlations(table: Table) -> list[float]:
    """Spearman's rho, across the finished configurations' table means, between epoch e and
    ``max_t``, for e = 1..max_t."""
    configs = _finished(table)
    final = [table.final(c) for c in configs]
    return [spearman([table.mean(c, e) for c in configs], final) for e in range(1, table.max_t + 1)]


def _rungs(grace: int, reduction_factor: float, max_t: int) -> list[float]:
    """ASHA's rungs below ``max_t`` (as Ray's ``_Bracket`` places them: grace * rf^k)."""
    count = int(math.log(max_t / grace) / math.log(reduction_factor) + 1)
    return [r for r in (grace * reduction_factor ** k for k in range(count)) if r < max_t]


def _percentile(values: list[float], q: float) -> float:
    """numpy's linear-interpolation percentile, as ASHA's cutoff takes it."""
    import numpy as np

    return float(np.percentile(values, q))


def safe_grace_period(table: Table, reduction_factor: float, mode: str, top: int = TOP) -> int:
    """The smallest grace period g (1..max_t) such that ASHA with ``reduction_factor``, shown
    every finished configuration's table mean at each rung r = g * rf^k < max_t (read at epoch
    ceil(r)), stops none of the ``top`` configurations with the best means at ``max_t``. A
    configuration is stopped at a rung when its mean is worse than the rung's cutoff, the
    (1 - 1/rf) quantile of all the means there (linear interpolation, as Ray's ASHA). This is
    ASHA with full information: a real sweep's cutoffs come from the trials that reached the rung
    before, in the order they ran. max_t (no rung below it) is always safe, and the only safe one
    when there are fewer than ``top * rf`` configurations (a rung keeps fewer than ``top``)."""
    sign = 1 if mode == "max" else -1
    configs = _finished(table)
    best = sorted(configs, key=lambda c: -sign * table.final(c))[:top]
    for grace in range(1, table.max_t + 1):
        safe = True
        for rung in _rungs(grace, reduction_factor, table.max_t):
            epoch = math.ceil(rung)
            cutoff = _percentile([sign * table.mean(c, epoch) for c in configs], (1 - 1 / reduction_factor) * 100)
            safe = safe and all(sign * table.mean(c, epoch) >= cutoff for c in best)
        if safe:
            return grace
    return table.max_t


def best_mean(table: Table, mode: str) -> float:
    finals = [table.final(c) for c in _finished(table)]
    return max(finals) if mode == "max" else min(finals)


def epochs_to_within(run: Replay, best: float, mode: str, points: float = WITHIN) -> int | None:
    """The trial-epochs spent when the pick's true objective first came within ``points`` of
    ``best``; None if it never did."""
    sign = 1 if mode == "max" else -1
    for spent, value in run.trace:
        if value is not None and sign * (best - value) <= points:
            return spent
    return None


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) by nearest rank: values that occurred (``inf`` stays ``inf``)."""
    s = sorted(values)
    return tuple(s[round(q * (len(s) - 1))] for q in (0.25, 0.5, 0.75))


def summarize(table: Table, replays: dict[str, list[Replay]], reduction_factor: float, mode: str) -> dict[str, Any]:
    best = best_mean(table, mode)
    nothing = -math.inf if mode == "max" else math.inf   # a search that completed no trial
    strategies = {}
    for name, runs in replays.items():
        reached = [epochs_to_within(r, best, mode) for r in runs]
        strategies[name] = {
            "spent": quartiles([r.spent for r in runs]),
            "picked": quartiles([nothing if r.picked is None else table.final(r.picked) for r in runs]),
            "to_within": quartiles([math.inf if e is None else e for e in reached]),
            "never": sum(e is None for e in reached), "search_seeds": len(runs)}
    return {"best_mean": best, "configs": len(table.configs), "max_t": table.max_t,
            "seeds": sorted({s for c in table.curves for s in c}), "rho": rank_correlations(table),
            "reduction_factor": reduction_factor, "safe_grace": safe_grace_period(table, reduction_factor, mode),
            "strategies": strategies}


def _q(q: tuple, digits: int = 0, infinite: str = "never") -> str:
    text = [(infinite if math.isinf(v) else f"{v:.{digits}f}") for v in q]
    return f"{text[1]} [{text[0]}, {text[2]}]"


def format_summary(summary: dict[str, Any], metric: str) -> str:
    head = ["strategy", "trial-epochs", f"picked {metric} (true)", f"trial-epochs to within {WITHIN}", "never"]
    rows = [[name, _q(s["spent"]), _q(s["picked"], 2, "none"), _q(s["to_within"]), f"{s['never']}/{s['search_seeds']}"]
            for name, s in summary["strategies"].items()]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    rho = "  ".join(f"e{e}: {r:.2f}" for e, r in enumerate(summary["rho"], 1))
    return "\n".join([
        f"{summary['configs']} configurations x seeds {summary['seeds']}, max_t {summary['max_t']}; grid's best "
        f"mean {summary['best_mean']:.2f}; median [quartiles] over search seeds",
        line(head), line(["-" * w for w in widths]), *(line(r) for r in rows),
        f"Spearman rho (epoch e vs max_t, table means): {rho}",
        f"safe grace period (no top-{TOP} configuration stopped, reduction factor "
        f"{summary['reduction_factor']:g}): {summary['safe_grace']}"])


def _pick_by_budget(runs: list[Replay], budget: int) -> float | None:
    """The median over search seeds of the pick's true objective once ``budget`` trial-epochs
    were spent (seeds with no pick yet left out; None when no seed has one)."""
    values = []
    for r in runs:
        known = [v for spent, v in r.trace if spent <= budget and v is not None]
        if known:
            values.append(known[-1])
    return quartiles(values) if values else None


def _plots(summary: dict[str, Any], table: Table, replays: dict[str, list[Replay]], metric: str,
           out_dir: Path) -> list[tuple[str, str]]:
    from mpcl.report.page import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, runs in replays.items():
        budgets = list(range(1, max(r.spent for r in runs) + 1))
        points = [(b, q) for b in budgets if (q := _pick_by_budget(runs, b)) is not None]
        line, = ax.step([b for b, _ in points], [q[1] for _, q in points], where="post", label=name)
        ax.fill_between([b for b, _ in points], [q[0] for _, q in points], [q[2] for _, q in points],
                        step="post", alpha=0.15, color=line.get_color())
    ax.axhline(summary["best_mean"], color="k", lw=0.8, ls=":", label="grid's best mean")
    ax.set(xlabel="trial-epochs spent", ylabel=f"true {metric} of the pick",
           title="The pick's true objective: median and quartiles over search seeds")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    pick = save_png(fig, out_dir, "pick_by_budget")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = list(range(1, table.max_t + 1))
    for c in range(len(table.configs)):
        left.plot(epochs, [table.mean(c, e) for e in epochs], marker="o", ms=3, lw=1)
    left.set(xlabel="epoch", ylabel=f"{metric} (mean over seeds)", title="Learning curves of the table")
    right.bar(epochs, [0 if math.isnan(r) else r for r in summary["rho"]])
    right.set(xlabel="epoch", ylabel="Spearman rho with max_t", title="Rank agreement with the final epoch",
              ylim=(-1, 1))
    return [pick, save_png(fig, out_dir, "curves_and_rho")]


def write_page(summary: dict[str, Any], table: Table, replays: dict[str, list[Replay]], metric: str,
               text: str, out_dir: Path) -> Path:
    """``out_dir/report.html`` (the plots inlined, and as PNG files beside it)."""
    from mpcl.files import write_text_atomic
    from mpcl.report.page import html_page, img_tag

    body = [f"<pre>{html.escape(text)}</pre>", *(img_tag(p) for p in _plots(summary, table, replays, metric, out_dir)),
            f"<p class='note'>Safe grace period: the smallest one for which ASHA, shown every configuration's "
            f"table mean at each rung, would stop none of the top {TOP} configurations at max_t.</p>"]
    path = out_dir / "report.html"
    write_text_atomic(path, html_page("Sweep efficiency on the learning-curve table", body))
    return path


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:sweep:{name}:start -->", f"<!-- bench:sweep:{name}:end -->"


def render_section(name: str, text: str, command: str, search_seeds: int) -> str:
    from mpcl.data.process import available_cpus

    start, end = section_markers(name)
    return "\n".join([
        start, f"## Sweep efficiency: {name}", "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{command}`",
        f"- machine: {cpu_model()}, {available_cpus()} cores available",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in versions("ray", "optuna").items()),
        f"- {search_seeds} search seeds per strategy, replayed against the learning-curve table; true objective: "
        "the table mean over training seeds at max_t", "",
        "```text", text, "```", end])
