"""``bench sweep``: build (or reuse and extend) the learning-curve table of a sweep file, replay
every search strategy against it, and report (``mpcl.bench.sweep_table``, ``sweep_replay``,
``sweep_report``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mpcl.bench.options import SweepBench
from mpcl.bench.record import Output
from mpcl.bench.sweep_replay import STRATEGIES, replay_all
from mpcl.bench.sweep_report import format_summary, render_section, section_markers, summarize, write_page
from mpcl.bench.sweep_table import Table, build_table, check_settings, grid, horizon
from mpcl.launch.sweep_spec import load_sweep

TABLE_DIR = "runs/bench/sweep"


def bench_sweep(bench: SweepBench, command: str, say: Callable[[str], None] = print) -> dict:
    """Everything ``bench sweep`` does; returns the summary. Bad input raises before training
    (``LaunchError`` for the sweep file, ``ValueError`` for the options)."""
    bench.check()
    spec = load_sweep(bench.sweep, overrides=list(bench.overrides))
    configs = grid(spec, bench.grid)
    path = Path(bench.table or f"{TABLE_DIR}/{spec.name}/table.jsonl")
    max_t = horizon(spec)
    check_settings(spec, path)
    table = Table.of(build_table(spec, configs, bench.seeds, path, say), max_t)
    replays = replay_all(spec, table, list(STRATEGIES), bench.search_seeds, bench.num_samples or spec.num_samples,
                         bench.budget)
    reduction_factor = float(spec.scheduler.get("reduction_factor", 2))
    summary = summarize(table, replays, reduction_factor, spec.mode)
    text = format_summary(summary, spec.metric)
    say(text)
    page = write_page(summary, table, replays, spec.metric, text, path.parent)
    data = {**summary, "sweep": spec.name, "metric": spec.metric, "mode": spec.mode, "command": command,
            "replays": {name: [{"search_seed": r.search_seed, "spent": r.spent, "trace": r.trace} for r in runs]
                        for name, runs in replays.items()}}
    start, end = section_markers(spec.name)
    section = render_section(spec.name, text, command, bench.search_seeds)
    Output(path.parent, Path(bench.record) if bench.record else None).write(
        "sweep", section, start, end, data, say)
    say(f"wrote {page}")
    return summary
