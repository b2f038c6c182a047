"""``bench sweep``: the learning-curve table, the strategies replayed against it, the report's
statistics (on tables written here, no training), and a tiny table built by real training."""

from __future__ import annotations

import math
import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mpcl.bench.sweep_replay import STRATEGIES, Replay, nearest, replay, replay_all
from mpcl.bench.sweep_report import epochs_to_within, rank_correlations, safe_grace_period, spearman, summarize
from mpcl.bench.sweep_table import Run, Table, grid, read_table
from mpcl.launch.sweep_spec import load_sweep

ROOT = Path(__file__).resolve().parent.parent
TEMPERATURE, WEIGHT = "method.temperature", "method.attention_weight"


@pytest.fixture(scope="module")
def demo():
    """The demo sweep: temperature (loguniform 0.05-1) x attention weight (uniform 0-1), 4 epochs."""
    return load_sweep("fmnist_demo")


def noisy_table(spec, counts=(3, 2), seeds=3, max_t=4) -> Table:
    """Curves rising to a peak at temperature 0.2, attention weight 1, with seed noise."""
    rng = random.Random(0)
    runs = []
    for c in grid(spec, counts):
        top = 70 + 5 * c[WEIGHT] - 3 * abs(math.log(c[TEMPERATURE] / 0.2))
        runs += [Run(c, s, [top - max_t + e + rng.gauss(0, 1) for e in range(1, max_t + 1)]) for s in range(seeds)]
    return Table.of(runs, max_t)


def curves_table(curves: list[list[list[float]]]) -> Table:
    """A table of len(curves) configurations (distinct temperatures), curves[c][seed] each."""
    runs = [Run({TEMPERATURE: 0.05 + 0.1 * c, WEIGHT: 0.5}, s, curve)
            for c, seeds in enumerate(curves) for s, curve in enumerate(seeds)]
    return Table.of(runs, len(curves[0][0]))


def outcome(replays: dict[str, list[Replay]]):
    return {name: [(r.spent, r.picked, r.trace) for r in runs] for name, runs in replays.items()}


def test_the_grid_is_log_spaced_for_loguniform_and_a_finer_one_holds_the_coarser(demo):
    configs = grid(demo, (3, 2))
    assert [c[TEMPERATURE] for c in configs[::2]] == [0.05, 0.223607, 1.0]     # sqrt(0.05 * 1)
    assert [c[WEIGHT] for c in configs[:2]] == [0.0, 1.0]
    finer = grid(demo, (5, 3))
    assert all(c in finer for c in configs) and len(finer) == 15
    space = {"n": {"type": "int", "low": 1, "high": 3}, "c": {"type": "choice", "values": ["a", "b"]}}
    assert grid(replace(demo, space=space), (5,)) == [{"n": n, "c": c} for n in (1, 2, 3) for c in "ab"]


def test_replay_is_deterministic_for_a_search_seed(demo):
    table = noisy_table(demo)
    first = outcome(replay_all(demo, table, list(STRATEGIES), 3, 8))
    assert first == outcome(replay_all(demo, table, list(STRATEGIES), 3, 8))
    # the search seed matters: TPE's own and the training seed drawn for each trial
    assert len({tuple(map(str, first["random"][i])) for i in range(3)}) > 1


def test_a_strategy_keeping_its_best_configuration_scores_its_table_mean(demo):
    # configuration 1 is the best at every epoch on both seeds; its table mean at max_t is 85
    table = curves_table([[[60, 61], [62, 63]], [[80, 80], [90, 90]], [[50, 50], [55, 55]]])
    spec = replace(demo, points=[{TEMPERATURE: 0.15, WEIGHT: 0.5}, {TEMPERATURE: 0.05, WEIGHT: 0.5}],
                   num_samples=4, max_concurrent=2)
    summary = summarize(table, {"tpe+asha": [replay(spec, table, "tpe+asha", s, 4) for s in range(3)]}, 2, "max")
    assert summary["best_mean"] == 85
    assert summary["strategies"]["tpe+asha"]["picked"] == (85, 85, 85)


def test_a_suggestion_maps_to_the_nearest_configuration_in_normalised_log_coordinates():
    space = {"t": {"type": "loguniform", "low": 0.01, "high": 1.0}, "x": {"type": "uniform", "low": 0, "high": 100},
             "y": {"type": "uniform", "low": 0, "high": 1}, "c": {"type": "choice", "values": ["a", "b"]}}
    configs = [{"t": t, "x": x, "y": y, "c": c} for c in "ab" for t in (0.01, 0.1) for x, y in ((0, 0), (100, 1))]
    # log scale: 0.04 is nearer 0.1 than 0.01 (linearly it is the other way round)
    assert configs[nearest(space, configs, {"t": 0.04, "x": 0, "y": 0, "c": "a"})] == configs[2]
    # normalised: (40, 0.7) is nearer (100, 1) than (0, 0) (in raw units x would decide)
    assert configs[nearest(space, configs, {"t": 0.1, "x": 40, "y": 0.7, "c": "a"})] == configs[3]
    # the choice must match
    assert configs[nearest(space, configs, {"t": 0.1, "x": 40, "y": 0.7, "c": "b"})] == configs[7]


def test_trial_epochs_to_within_half_a_point(demo):
    # two 2-epoch trials one after the other: the first (true 70) ends at 2 trial-epochs, the
    # second (true 73, the best) at 4
    table = curves_table([[[69, 70]], [[72, 73]]])
    spec = replace(demo, points=[{TEMPERATURE: 0.05, WEIGHT: 0.5}, {TEMPERATURE: 0.15, WEIGHT: 0.5}],
                   num_samples=2, max_concurrent=1, scheduler={"type": "none"})
    run = replay(spec, table, "random", 0, 2)
    assert run.trace == [(2, 70.0), (4, 73.0)]
    assert epochs_to_within(run, 73.0, "max") == 4
    assert epochs_to_within(run, 70.4, "max") == 2
    assert epochs_to_within(Replay("x", 0, 4, 0, [(2, 72.4), (4, 72.4)]), 73.0, "max") is None
    assert epochs_to_within(Replay("x", 0, 4, 0, [(2, 5.0), (4, 3.4)]), 3.0, "min") == 4


def test_spearman_per_epoch_against_scipy(demo):
    stats = pytest.importorskip("scipy.stats")
    table = noisy_table(demo, counts=(4, 3))
    rho = rank_correlations(table)
    final = [table.final(c) for c in range(len(table.configs))]
    for e in range(1, table.max_t + 1):
        expected = stats.spearmanr([table.mean(c, e) for c in range(len(table.configs))], final).statistic
        assert rho[e - 1] == pytest.approx(expected)
    assert rho[-1] == pytest.approx(1.0)
    assert spearman([1, 2, 2, 3], [4, 3, 3, 1]) == pytest.approx(stats.spearmanr([1, 2, 2, 3], [4, 3, 3, 1]).statistic)


def test_safe_grace_period_on_a_late_bloomer():
    # 10 configurations, flat curves but one of the top 5 (final 76) is last at epochs 1 and 2 and
    # above the median from epoch 3: rungs at 1, 2 (grace 1) or 2 (grace 2) stop it, rung 3 does not
    finals = [80, 79, 78, 77, 76, 60, 59, 58, 57, 56]
    curves = [[[10, 10, 75, 76]] if f == 76 else [[f] * 4] for f in finals]
    assert safe_grace_period(curves_table(curves), 2, "max") == 3
    negated = [[[-v for v in seeds[0]]] for seeds in curves]
    assert safe_grace_period(curves_table(negated), 2, "min") == 3
    flat = [[[f] * 4] for f in finals]
    assert safe_grace_period(curves_table(flat), 2, "max") == 1
    # with 8, the fifth best is below the median at every rung: only max_t (no rung) keeps it
    assert safe_grace_period(curves_table(flat[:8]), 2, "max") == 4


def test_a_trial_asha_stopped_is_never_the_pick(demo):
    # A (60 at the end) completes first; B is below A at the rung of epoch 1 and stops there
    # with 70, more than A's final value, though B would have ended best
    table = curves_table([[[80, 60]], [[70, 99]]])
    spec = replace(demo, points=[{TEMPERATURE: 0.05, WEIGHT: 0.5}, {TEMPERATURE: 0.15, WEIGHT: 0.5}],
                   num_samples=2, max_concurrent=1)
    run = replay(spec, table, "tpe+asha", 0, 2)
    assert run.spent == 3 and run.picked == 0 and run.trace == [(2, 60.0), (3, 60.0)]


def test_asha_stops_trials_in_the_replay(demo):
    table = noisy_table(demo)
    for seed in range(2):
        full, early = (replay(demo, table, name, seed, 8) for name in ("tpe", "tpe+asha"))
        assert full.spent == 8 * table.max_t
        assert early.spent < full.spent


def run_py(monkeypatch, *args: str) -> None:
    from mpcl import cli

    monkeypatch.setattr(sys, "argv", [str(ROOT / "run.py"), *args])
    cli.main()


def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from tests.helpers.sweeps import sweep_file

    four = {k: {"type": "uniform", "low": 0.1, "high": 0.5} for k in
            ("method.attention_weight", "optim.weight_decay", "optim.probe_lr", "method.temperature")}
    cases = [(["nope.yaml"], "nope.yaml"), (["fmnist_demo", "--search-seeds", "5"], "--search-seeds 5"),
             (["fmnist_demo", "--grid", "0"], "--grid 0"),
             ([str(sweep_file(tmp_path, "/data", space=four, points=[])), "--table", str(tmp_path / "t")], "space")]
    for args, named in cases:
        with pytest.raises(SystemExit) as e:
            run_py(monkeypatch, "bench", "sweep", *args)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and named in err and "\n" not in err, (args, err)
    assert not (tmp_path / "t").exists()


def test_a_table_of_other_fixed_settings_is_refused_and_the_scheduler_is_not_one(tmp_path, monkeypatch, capsys):
    """A table records its runs' fixed settings on first use; replaying it under another
    scheduler or sampler setting is allowed, under another training setting refused (one line,
    exit 2, naming the key and both values), and the table and its record stay as they were."""
    from mpcl.bench.sweep_table import check_settings, settings_path

    table = tmp_path / "table.jsonl"
    check_settings(load_sweep("fmnist_demo"), table)
    recorded = settings_path(table).read_text()
    assert '"data.subset": 3072' in recorded and "method.temperature" not in recorded and '"out"' not in recorded
    check_settings(load_sweep("fmnist_demo", overrides=["scheduler.grace_period=2", "sampler.n_startup_trials=4",
                                                        "tracking.wandb=auto"]), table)
    table.write_text('{"params": {}, "seed": 0, "objective": [1.0]}\n')
    with pytest.raises(SystemExit) as e:
        run_py(monkeypatch, "bench", "sweep", "fmnist_demo", "--table", str(table), "--override", "data.subset=1024",
               "--override", f"data.path={tmp_path / 'none'}")   # not a setting; training without the check fails
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err, err
    assert f"{table}: its runs trained with data.subset=3072, this sweep's with data.subset=1024" in err
    assert settings_path(table).read_text() == recorded
    assert table.read_text() == '{"params": {}, "seed": 0, "objective": [1.0]}\n'


def test_a_sweeps_scheduler_and_sampler_settings_on_the_command_line():
    from mpcl.launch import LaunchError

    spec = load_sweep("fmnist_demo", overrides=["scheduler.grace_period=2", "sampler.n_startup_trials=4"])
    assert spec.scheduler == {**load_sweep("fmnist_demo").scheduler, "grace_period": 2}
    assert spec.sampler["n_startup_trials"] == 4 and spec.sampler["type"] == "tpe"
    assert "scheduler.grace_period" not in spec.overrides
    with pytest.raises(LaunchError, match=r"yaml: scheduler: unknown key\(s\) grace_perod; allowed: grace_period"):
        load_sweep("fmnist_demo", overrides=["scheduler.grace_perod=2"])


@pytest.mark.slow
def test_a_real_table_is_resumed_and_reported(tmp_path, monkeypatch, capsys, fmnist_path):
    from tests.helpers.runs import tiny_sweep_overrides
    from tests.helpers.sweeps import sweep_file

    space = {TEMPERATURE: {"type": "loguniform", "low": 0.1, "high": 1.0},
             WEIGHT: {"type": "uniform", "low": 0.0, "high": 1.0}}
    sweep = sweep_file(tmp_path, fmnist_path, space=space, points=[], num_samples=3,
                       overrides=tiny_sweep_overrides(fmnist_path, subset=128, epochs=2),
                       scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    table = tmp_path / "bench" / "table.jsonl"
    args = ["bench", "sweep", str(sweep), "--table", str(table), "--grid", "2", "1", "--seeds", "2"]
    run_py(monkeypatch, *args)
    out = capsys.readouterr().out
    assert "0 run(s) there, 4 to train" in out
    runs = read_table(table)
    assert len(runs) == 4 and {len(r.objective) for r in runs} == {2}
    assert {r.seed for r in runs} == {0, 1}
    assert sorted({(r.params[TEMPERATURE], r.params[WEIGHT]) for r in runs}) == [(0.1, 0.5), (1.0, 0.5)]
    for name in STRATEGIES:
        assert any(line.startswith(name + " ") for line in out.splitlines()), out
    assert (table.parent / "report.html").is_file() and (table.parent / "sweep.json").is_file()

    run_py(monkeypatch, *args)      # everything is there: nothing trains
    assert "to train" not in capsys.readouterr().out
    assert read_table(table) == runs

    text = table.read_text()        # a kill in the middle of writing the last line
    table.write_text(text[:text.rstrip("\n").rfind("\n") + 20])
    record = tmp_path / "BENCHMARKS.md"
    run_py(monkeypatch, *args, "--record", str(record))
    assert "3 run(s) there, 1 to train" in capsys.readouterr().out
    section = record.read_text()
    assert "<!-- bench:sweep:tiny:start -->" in section and "\ntpe+asha " in section and "optuna " in section
    again = read_table(table)
    assert again[:3] == runs[:3] and len(again) == 4 and table.read_text().count("\n") == 4
