"""Sweeps with several objectives: the Pareto front (against a brute-force reference), the
refusals before Ray, what the searcher tells Optuna, the console, and a tiny two-objective
sweep whose results, per-point configs and report hold its front."""

from __future__ import annotations

import io
import itertools
import json
import pickle
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from tests.helpers.sweeps import assert_refused_before_ray, ROOT, sweep_env, sweep_file

TWO_OBJECTIVES = [{"metric": "val/knn_top1", "mode": "max"}, {"metric": "time/epoch_s", "mode": "min"}]


def _front_by_brute_force(points, modes):
    """Indices of the points that no other point beats: ``q`` beats ``p`` when it is no worse in
    every objective and not equal to ``p`` in all of them."""
    def no_worse(q, p, mode):
        return q >= p if mode == "max" else q <= p

    return [i for i, p in enumerate(points)
            if not any(all(no_worse(q[k], p[k], m) for k, m in enumerate(modes)) and q != p for q in points)]


def test_pareto_front_matches_brute_force_with_mixed_modes():
    from mpcl.tracking.sweep_results import pareto_front

    grid = [0.0, 1.0, 2.0]
    points = [list(p) for p in itertools.product(grid, grid)][::2] + [[1.0, 1.0], [2.0, 0.5], [0.5, 2.0]]
    for modes in (["max", "min"], ["min", "max"], ["max", "max"], ["min", "min"]):
        assert pareto_front(points, modes) == _front_by_brute_force(points, modes), modes
    three = [[3, 1, 2], [1, 3, 2], [2, 2, 2], [3, 1, 1], [1, 1, 1], [3, 3, 0], [3, 1, 2]]
    assert pareto_front(three, ["max", "max", "min"]) == _front_by_brute_force(three, ["max", "max", "min"])
    # by hand: max x, min y over (1, 2), (2, 3), (2, 2), (0, 0): (2, 2) and (0, 0)
    assert pareto_front([[1, 2], [2, 3], [2, 2], [0, 0]], ["max", "min"]) == [2, 3]


REFUSED = [  # (change to a valid two-objective sweep file, what the one line must say)
    ({"scheduler": {"type": "asha"}}, "scheduler.type='asha': several objectives need scheduler {type: none}"),
    ({"sampler": {"type": "cmaes"}}, "sampler.type='cmaes': CMA-ES optimizes one objective"),
    ({"objective": [*TWO_OBJECTIVES, {"metric": "val/knn_top5", "mode": "max"}]},
     "objective[2].metric='val/knn_top5': method simclr_attn does not report it"),
    ({"objective": [TWO_OBJECTIVES[0], TWO_OBJECTIVES[0]]}, "objective[1].metric='val/knn_top1': listed twice"),
    ({"objective": [TWO_OBJECTIVES[0], {"metric": "time/epoch_s", "mode": "least"}]}, "objective[1].mode='least'"),
    ({"objective": []}, "objective=[]"),
    ({"sampler": {"type": "tpe", "population_size": 8}}, "sampler.population_size=8: only for sampler.type nsga2"),
    ({"sampler": {"type": "nsga2", "population_size": 1}}, "sampler.population_size=1: must be a whole number >= 2"),
]


@pytest.mark.parametrize("change,named", REFUSED)
def test_what_cannot_serve_several_objectives_is_refused_before_ray(change, named, tmp_path, capsys):
    tree = {**yaml.safe_load(sweep_file(tmp_path, "/nowhere").read_text()), "objective": TWO_OBJECTIVES, **change}
    assert_refused_before_ray(tree, tmp_path, capsys, named)


def test_nsga2_with_two_objectives_is_accepted(tmp_path):
    from mpcl.launch.sweep_spec import load_sweep

    path = sweep_file(tmp_path, "/nowhere", objective=TWO_OBJECTIVES,
                      sampler={"type": "nsga2", "seed": 1, "population_size": 4})
    spec = load_sweep(path)
    assert spec.objectives == [("val/knn_top1", "max"), ("time/epoch_s", "min")] and spec.multi_objective
    assert spec.trial_overrides({})["train.eval_every"] == 1


def test_searcher_tells_optuna_every_objective(tmp_path):
    """Without Ray: a finished trial reaches the study COMPLETE with both values (no
    intermediate values, which Optuna refuses for several objectives); one missing a value or
    errored is FAIL."""
    pytest.importorskip("ray.tune")
    import optuna

    from mpcl.launch.search import make_searcher
    from mpcl.launch.sweep_spec import SweepSpec
    from mpcl.launch.worker import objective_keys

    spec = SweepSpec(name="unit", base=None, overrides={}, scheduler={"type": "none"},
                     sampler={"type": "nsga2", "seed": 0, "population_size": 4},
                     objectives=[("val/knn_top1", "max"), ("time/epoch_s", "min")],
                     space={"method.temperature": {"type": "uniform", "low": 0.1, "high": 1.0}})
    searcher = make_searcher(spec, tmp_path, epochs=2)
    searcher.set_search_properties(None, None, {})
    for tid in ("a", "b", "c"):
        searcher.suggest(tid)
    pickle.loads(pickle.dumps(searcher))   # Tune pickles it with the experiment (--resume)
    acc, secs = objective_keys(2)
    r = lambda e, v, s: {acc: v, secs: s, "epochs_done": e, "training_iteration": e}  # noqa: E731
    searcher.on_trial_result("a", r(1, 50.0, 3.0))
    searcher.on_trial_complete("a", r(2, 55.0, 2.5))
    searcher.on_trial_complete("b", {secs: 2.0, "epochs_done": 2})      # no accuracy reported
    searcher.on_trial_complete("c", r(1, 40.0, 2.0), error=True)
    study = optuna.load_study(study_name="unit", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert isinstance(searcher._ot_study.sampler, optuna.samplers.NSGAIISampler)
    t = {x.user_attrs["ray_trial_id"]: x for x in study.trials}
    assert t["a"].state.name == "COMPLETE" and t["a"].values == [55.0, 2.5] and t["a"].intermediate_values == {}
    assert t["b"].state.name == "FAIL" and t["c"].state.name == "FAIL"


def test_console_shows_every_objective_and_the_front(tmp_path):
    from mpcl.launch.console import SweepView
    from mpcl.launch.worker import objective_keys

    spec = SimpleNamespace(metric="val/knn_top1", mode="max", objectives=[("val/knn_top1", "max"),
                                                                          ("time/epoch_s", "min")],
                           num_samples=3, space={"method.temperature": {}})
    stream = io.StringIO()
    view = SweepView(spec, 1, tmp_path, stream=stream, live=False)
    for tid, acc, secs in (("aaaa", 60.0, 2.0), ("bbbb", 50.0, 1.0), ("cccc", 40.0, 3.0)):
        trial = SimpleNamespace(trial_id=tid, config={"method.temperature": 0.5}, error_file=None)
        view.on_trial_start(0, [], trial)
        view.on_trial_result(0, [], trial, dict(zip(objective_keys(2), (acc, secs)), epochs_done=1))
        view.on_trial_complete(0, [], trial)
    assert "trial aaaa complete: val/knn_top1=60 time/epoch_s=2\n" in stream.getvalue()
    assert view._best_text() == "Pareto front: aaaa, bbbb"
    table = io.StringIO()
    from rich.console import Console

    Console(file=table, width=200).print(view.table())
    assert "time/epoch_s" in table.getvalue() and "40" in table.getvalue()


@pytest.mark.slow
@pytest.mark.ray
def test_two_objective_sweep_writes_its_pareto_front(tmp_path, fmnist_path):
    """4 tiny trials, accuracy up and epoch time down: results.json's front is the
    non-dominated complete trials by their own values, each has its config file, and the
    report names the front."""
    path = sweep_file(tmp_path, fmnist_path, objective=TWO_OBJECTIVES, points=[], num_samples=4,
                      sampler={"type": "nsga2", "seed": 0, "population_size": 2},
                      space={"method.temperature": {"type": "loguniform", "low": 0.1, "high": 1.0}})
    run = subprocess.run([sys.executable, "run.py", "sweep", str(path)], cwd=ROOT, env=sweep_env(),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    sweep_dir = tmp_path / "sweep"
    summary = json.loads((sweep_dir / "results.json").read_text())
    assert summary["objectives"] == TWO_OBJECTIVES
    complete = [r for r in summary["trials"] if r["state"] == "complete"]
    assert len(complete) == 4
    values = {r["trial_id"]: (r["objectives"]["val/knn_top1"], r["objectives"]["time/epoch_s"]) for r in complete}
    front = {t for t, (acc, secs) in values.items()
             if not any(a >= acc and s <= secs and (a, s) != (acc, secs) for a, s in values.values())}
    assert set(summary["pareto"]) == front and front
    assert {r["trial_id"] for r in summary["trials"] if r["pareto"]} == front
    for r in complete:
        metrics = [json.loads(line) for line in (sweep_dir / "trials" / r["trial_id"] / "metrics.jsonl").open()]
        last = [m for m in metrics if "val/knn_top1" in m][-1]
        assert values[r["trial_id"]] == (last["val/knn_top1"], last["time/epoch_s"])
    report = subprocess.run([sys.executable, "run.py", "report", str(sweep_dir)], cwd=ROOT, env=sweep_env(),
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    page = (sweep_dir / "report" / "index.html").read_text()
    assert f"Pareto front: {len(front)} trial(s)" in page and '<img alt="pareto_front"' in page
    assert all(t in page for t in front)
    configs = sorted((sweep_dir / "report" / "best_configs").glob("pareto_*.yaml"))
    assert {c.stem.split("_", 2)[2] for c in configs} == front
    for c in configs:
        cfg = yaml.safe_load(c.read_text())
        trial_id = c.stem.split("_", 2)[2]
        ran = yaml.safe_load((sweep_dir / "trials" / trial_id / "config.yaml").read_text())
        assert cfg["method"] == ran["method"] and cfg["out"] != ran["out"]
    assert not (sweep_dir / "report" / "best_config.yaml").exists()


def test_confirm_reruns_the_pareto_points_with_each_objectives_spread(tmp_path):
    """Without Ray: the Pareto trials (not the top_k) and the baseline are chosen; the summary
    holds each objective's values by seed, their mean and sd; the report tables them."""
    from mpcl.launch import confirm
    from mpcl.launch.sweep_spec import load_sweep
    from mpcl.report.comparison import confirm_section

    path = sweep_file(tmp_path, "/nowhere", objective=TWO_OBJECTIVES, confirm={"top_k": 1, "seeds": 2})
    spec = load_sweep(path)
    row = lambda tid, t, pareto: {"trial_id": tid, "state": "complete", "objective": 1.0, "pareto": pareto,  # noqa: E731
                                  "params": {"method.temperature": t, "optim.lr": 0.3}}
    rows = [row("a", 0.9, True), row("b", 0.8, False), row("c", 0.7, True)]
    chosen = confirm.candidates(spec, rows)
    assert [label for label, _ in chosen] == ["baseline", "a", "c"]
    runs = [SimpleNamespace(out=f"{label}/{seed}", train=SimpleNamespace(seed=seed))
            for label, _ in chosen for seed in (1, 2)]
    owners = [label for label, _ in chosen for _ in (1, 2)]
    results = [{"metrics": {"val/knn_top1": 50.0 + i, "time/epoch_s": 2.0 * (i % 2 + 1)}} for i in range(6)]
    summary = confirm._pareto_confirm(spec, chosen, runs, owners, results, [1, 2])
    a = next(c for c in summary["configs"] if c["label"] == "a")
    assert a["objectives"]["val/knn_top1"]["values"] == {1: 52.0, 2: 53.0}
    assert a["objectives"]["val/knn_top1"]["summary"]["mean"] == 52.5
    assert a["objectives"]["time/epoch_s"]["summary"]["mean"] == 3.0
    assert a["objectives"]["time/epoch_s"]["summary"]["sd"] == pytest.approx(2 ** 0.5)
    assert summary["winner"] is None and a["run_dirs"] == ["a/1", "a/2"]
    page = "".join(confirm_section(summary))
    assert "time/epoch_s mean ± sd" in page and "52.50 ± 0.71" in page and "3.00 ± 1.41" in page


def _results_of_three_objectives(sweep_dir):
    """results.json of a finished sweep over three objectives: trials a and b on the front, c
    beaten by a in all three, d failed; each trial with its config.yaml."""
    objectives = [*TWO_OBJECTIVES, {"metric": "val/align", "mode": "min"}]
    values = {"a": (60.0, 2.0, 0.5), "b": (50.0, 1.0, 0.6), "c": (55.0, 3.0, 0.7), "d": (None, None, None)}
    rows = []
    for tid, trio in values.items():
        run_dir = sweep_dir / "trials" / tid
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"method": {"temperature": len(rows) / 10},
                                                            "out": str(run_dir)}))
        rows.append({"trial_id": tid, "state": "failed" if tid == "d" else "complete", "reason": "",
                     "params": {"method.temperature": len(rows) / 10}, "objective": trio[0], "epochs_done": 2,
                     "run_dir": str(run_dir), "objectives": dict(zip([o["metric"] for o in objectives], trio))})
    summary = {"name": "three", "metric": "val/knn_top1", "mode": "max", "epochs": 2,
               "objectives": objectives, "trials": rows}
    from mpcl.tracking.sweep_results import mark_pareto, write_results

    mark_pareto(summary)
    write_results(sweep_dir, summary)
    return summary


def test_report_of_three_objectives_tables_the_front_and_saves_each_points_config(tmp_path):
    from mpcl.report.sweep import sweep_report

    summary = _results_of_three_objectives(tmp_path)
    assert summary["pareto"] == ["a", "b"] and [r["pareto"] for r in summary["trials"]] == [True, True, False, False]
    page = sweep_report(tmp_path, tmp_path / "report" / "index.html").read_text()
    assert "Pareto front: 2 trial(s)" in page and '<img alt="pareto_front"' not in page   # a table: no plot
    assert "<td>best_configs/pareto_0_a.yaml</td>" in page and "<td>best_configs/pareto_1_b.yaml</td>" in page
    assert page.count("<td>★</td>") == 2 and "<th>val/align</th>" in page
    configs = sorted(p.name for p in (tmp_path / "report" / "best_configs").iterdir())
    assert configs == ["pareto_0_a.yaml", "pareto_1_b.yaml"]
    saved = (tmp_path / "report" / "best_configs" / "pareto_1_b.yaml").read_text()
    assert saved.startswith("# Pareto point 1 of sweep three: trial b, val/knn_top1 = 50, time/epoch_s = 1, "
                            "val/align = 0.6\n")
    assert yaml.safe_load(saved) == {"method": {"temperature": 0.1}, "out": "runs/three_pareto_1"}
    assert not (tmp_path / "report" / "best_config.yaml").exists()


def test_a_running_sweep_is_reported_from_its_study_with_the_front(tmp_path):
    """No results.json yet: the rows and the front come from the study's values."""
    import optuna

    from mpcl.report.sweep import load_sweep_results
    from mpcl.tracking.sweep_results import storage_url

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "live", "objective": TWO_OBJECTIVES}))
    study = optuna.create_study(study_name="live", storage=storage_url(tmp_path), directions=["maximize", "minimize"])
    for tid, values in (("a", [60.0, 2.0]), ("b", [50.0, 3.0]), ("c", None)):
        trial = study.ask({"method.temperature": optuna.distributions.FloatDistribution(0.1, 1.0)})
        trial.set_user_attr("ray_trial_id", tid)
        if values:
            study.tell(trial, values)
    summary = load_sweep_results(tmp_path)
    rows = {r["trial_id"]: r for r in summary["trials"]}
    assert rows["a"]["objectives"] == {"val/knn_top1": 60.0, "time/epoch_s": 2.0} and rows["a"]["objective"] == 60.0
    assert rows["c"]["state"] == "running" and rows["c"]["objectives"]["val/knn_top1"] is None
    assert summary["pareto"] == ["a"] and rows["a"]["pareto"] and not rows["b"]["pareto"]


def test_each_report_carries_every_objectives_last_measured_value():
    """An epoch without evaluation carries the last evaluation's value under each key; one
    objective keeps its single ``objective`` key."""
    from mpcl.launch.worker import OBJECTIVE_KEY, RayReporter, objective_keys

    def reporter(objective):
        r = RayReporter.__new__(RayReporter)   # no Ray: only the objectives' bookkeeping
        r.objectives, r.last_values = [objective] if isinstance(objective, str) else objective, {}
        return r

    several = reporter(["val/knn_top1", "time/epoch_s"])
    acc, secs = objective_keys(2)
    first = several._with_objectives({"val/knn_top1": 50.0, "time/epoch_s": 2.0})
    second = several._with_objectives({"time/epoch_s": 1.5})         # no evaluation this epoch
    assert (first[acc], first[secs]) == (50.0, 2.0) and (second[acc], second[secs]) == (50.0, 1.5)
    one = reporter("val/knn_top1")
    assert objective_keys(1) == [OBJECTIVE_KEY] and OBJECTIVE_KEY not in one._with_objectives({"train/loss": 1.0})
    assert one._with_objectives({"val/knn_top1": 40.0})[OBJECTIVE_KEY] == 40.0
    assert one._with_objectives({"train/loss": 1.0})[OBJECTIVE_KEY] == 40.0
