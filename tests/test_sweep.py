"""Sweeps: a sweep of 3 tiny trials (one diverges) is interrupted, resumed, and finishes with
its finished trials kept; the Optuna study in SQLite holds every trial in the right state.
The searcher's PRUNED/FAIL/COMPLETE bookkeeping is checked without Ray as well."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.sweeps import assert_refused_before_ray, ROOT, sweep_env, sweep_file

FAULTS = Path(__file__).resolve().parent / "faults"   # sitecustomize: MPCL_TEST_FAULT names the fault
HELD_FILE, RELEASE_FILE = "HELD", "RELEASE"   # written and awaited by the hook


def _finished_trials(sweep_dir: Path) -> list[Path]:
    """Trials the study already holds as COMPLETE (Tune has seen them finish)."""
    import sqlite3

    db = sweep_dir / "optuna.db"
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            ids = con.execute("SELECT a.value_json FROM trials t JOIN trial_user_attributes a "
                              "ON a.trial_id = t.trial_id WHERE t.state = 'COMPLETE' "
                              "AND a.key = 'ray_trial_id'").fetchall()
    except sqlite3.Error:
        return []
    return [sweep_dir / "trials" / json.loads(v) for (v,) in ids]


def _wait_for(what: str, condition, proc, log: Path, timeout: float = 300):
    """Polls ``condition`` (a state the sweep reaches and then keeps: a held trial stays held);
    the deadline only turns a hang into a failure."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, f"the sweep ended before {what}:\n" + log.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {timeout} s:\n" + log.read_text()[-3000:])


@pytest.mark.ray
def test_sweep_interrupted_resumed_keeps_finished_trials(tmp_path, fmnist_path):
    """Every trial that trains holds after reporting its first epoch (the test-only hook in
    tests/faults, hold_after_first_epoch, on the sweep's PYTHONPATH): the first to hold is released
    and finishes; the sweep is interrupted while the second
    holds, its first epoch reported and checkpointed. --resume keeps the finished trial as it
    was and continues the interrupted one from its checkpoint, the study keeping both epochs'
    intermediate values."""
    import optuna

    path = sweep_file(tmp_path, fmnist_path)
    sweep_dir = tmp_path / "sweep"
    log_path = tmp_path / "first.log"
    log = open(log_path, "w")
    env = sweep_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), str(ROOT), env.get("PYTHONPATH")]))
    env["MPCL_TEST_FAULT"] = "hold_after_first_epoch"
    proc = subprocess.Popen([sys.executable, "run.py", "sweep", str(path)], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    held = lambda: sorted(p.parent for p in (sweep_dir / "trials").glob(f"*/{HELD_FILE}"))  # noqa: E731
    first = _wait_for("held trial", held, proc, log_path)[0]
    for again in ([], ["--resume"]):                       # a second driver into the running sweep
        refused = subprocess.run([sys.executable, "run.py", "sweep", str(path), *again], cwd=ROOT, env=sweep_env(),
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2, refused.stderr
        assert re.fullmatch(rf"error: {sweep_dir} is in use by pid {proc.pid} on host \S+ since \d\d:\d\d; "
                            "wait for it or choose another out", refused.stderr.strip()), refused.stderr
    (first / RELEASE_FILE).touch()
    _wait_for(f"COMPLETE {first.name}", lambda: first in _finished_trials(sweep_dir), proc, log_path)
    second = _wait_for("second held trial", lambda: [p for p in held() if p != first], proc, log_path)[0]
    before = {first.name: (first / "metrics.jsonl").read_text()}
    second_epoch_0 = (second / "metrics.jsonl").read_text()
    proc.send_signal(signal.SIGINT)                           # the driver is interrupted
    assert proc.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[-3000:]   # Tune stops gracefully
    log.close()
    interrupted = {t["trial_id"]: t for t in json.loads((sweep_dir / "results.json").read_text())["trials"]}
    assert interrupted[first.name]["state"] == "complete"
    assert interrupted[second.name]["state"] == "interrupted", interrupted[second.name]
    assert "interrupted after" in interrupted[second.name]["reason"]

    done = subprocess.run([sys.executable, "run.py", "sweep", str(path), "--resume"], cwd=ROOT, env=sweep_env(),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((sweep_dir / "results.json").read_text())
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert len(trials) == 3
    for name, text in before.items():                         # finished trials kept, not rerun
        assert trials[name]["state"] == "complete"
        assert (sweep_dir / "trials" / name / "metrics.jsonl").read_text() == text
    states = sorted(t["state"] for t in trials.values())
    assert states == ["complete", "complete", "failed"], summary
    failed = next(t for t in trials.values() if t["state"] == "failed")
    assert "diverged" in failed["reason"] and failed["params"]["optim.lr"] == 1e30
    assert summary["trials"][0]["state"] == "complete"         # best first

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    by_id = {t.user_attrs.get("ray_trial_id"): t for t in study.trials}
    assert set(by_id) == set(trials)                           # every trial, no extra
    expect = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}
    for tid, t in trials.items():
        assert by_id[tid].state.name == expect[t["state"]], tid
        if t["state"] == "complete":
            assert by_id[tid].value == pytest.approx(t["objective"])
            assert sorted(by_id[tid].intermediate_values) == [1, 2]
    assert trials[second.name]["state"] == "complete"          # continued, not restarted:
    assert (second / "metrics.jsonl").read_text().startswith(second_epoch_0)
    assert [json.loads(x)["epoch"] for x in (second / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert len(list(second.glob("checkpoint_*/state.pt"))) == 2

    rep = subprocess.run([sys.executable, "run.py", "report", str(sweep_dir)], cwd=ROOT, env=sweep_env(),
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    page = (sweep_dir / "report" / "index.html").read_text()
    for tid in trials:
        assert tid in page
    assert "diverged" in page and (sweep_dir / "report" / "best_config.yaml").is_file()


def test_searcher_records_pruned_failed_and_complete(tmp_path):
    """Without Ray's scheduler: what reaches the study for a trial stopped early (PRUNED with
    its intermediate values), one that errored after reporting (FAIL), one that finished."""
    pytest.importorskip("ray.tune")
    import optuna

    from mpcl.launch.search import make_searcher
    from mpcl.launch.sweep_spec import SweepSpec
    from mpcl.launch.worker import OBJECTIVE_KEY

    spec = SweepSpec(name="unit", base=None, overrides={},
                     space={"method.temperature": {"type": "uniform", "low": 0.1, "high": 1.0}})
    searcher = make_searcher(spec, tmp_path, epochs=3)
    searcher.set_search_properties(None, None, {})
    for tid in ("a", "b", "c"):
        assert "method" in searcher.suggest(tid) or "method.temperature" in searcher.suggest(tid)
    r = lambda e, v: {OBJECTIVE_KEY: v, "epochs_done": e, "training_iteration": e}  # noqa: E731
    searcher.on_trial_result("a", r(1, 50.0))
    searcher.on_trial_complete("a", r(1, 50.0))              # stopped by ASHA after 1 of 3
    searcher.on_trial_result("b", r(1, 40.0))
    searcher.on_trial_complete("b", r(1, 40.0), error=True)  # crashed after reporting
    for e, v in ((1, 55.0), (2, 60.0)):
        searcher.on_trial_result("c", r(e, v))
    searcher.on_trial_complete("c", r(3, 65.0))
    study = optuna.load_study(study_name="unit", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    t = {x.user_attrs["ray_trial_id"]: x for x in study.trials}
    assert t["a"].state.name == "PRUNED" and t["a"].intermediate_values == {1: 50.0}
    assert t["b"].state.name == "FAIL" and t["b"].value is None
    assert t["c"].state.name == "COMPLETE" and t["c"].value == 65.0
    assert t["c"].intermediate_values == {1: 55.0, 2: 60.0, 3: 65.0}


def test_bad_sweep_file_is_one_line(tmp_path, capsys):
    from mpcl import cli

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": str(ROOT / "configs/fmnist_simclr_attn.yaml"),
                                   "space": {"method.temprature": {"type": "uniform", "low": 0.1, "high": 1}}}))
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", str(bad)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "method.temprature" in err


@pytest.mark.parametrize("name", ["fmnist_demo", "cifar10_simclr_attn", "cifar100_simclr_attn",
                                  "imagenet100_simclr_attn"])
def test_attention_sweeps_try_the_released_simclr_attn(name):
    """Every sweep over method.attention_weight has a point that is the released method:
    a = 1, attention temperature 1, the whole InfoNCE term weighted."""
    from mpcl.launch.sweep_spec import load_sweep

    spec = load_sweep(ROOT / "sweeps" / f"{name}.yaml")
    assert "method.attention_weight" in spec.space
    released = [p for p in spec.points if p.get("method.attention_weight") == 1.0]
    assert released, name
    m = spec.config(released[0]).method
    assert (m.name, m.attention_weight, m.attention_temperature, m.attention_target) == \
        ("simclr_attn", 1.0, 1.0, "loss")


BAD_SWEEPS = [  # (change to a valid sweep file, the key the one-line error names)
    ({"objective": {"metric": "val/knn_top5", "mode": "max"}}, "objective.metric='val/knn_top5'"),
    ({"objective": {"metric": "val/net0_top1", "mode": "max"}}, "objective.metric='val/net0_top1'"),  # mcl's
    ({"objective": "val/knn_top1"}, "objective="),
    ({"objective": {"metric": "val/knn_top1", "mode": "maximum"}}, "objective.mode"),
    ({"points": [{"method.temperature": 5.0, "optim.lr": 0.3}]}, "points[0].method.temperature=5.0"),
    ({"points": [{"method.temperature": 0.5, "optim.lr": 0.5}]}, "points[0].optim.lr=0.5"),
    ({"points": [{"method.temperature": "hot"}]}, "points[0].method.temperature='hot'"),
    ({"points": {"method.temperature": 0.5}}, "points="),
    ({"base": None}, "base: missing"),
    ({"base": "configs/nope.yaml"}, "base='configs/nope.yaml'"),
    ({"num_samples": "many"}, "num_samples='many'"),
    ({"num_samples": 2.5}, "num_samples=2.5"),
    ({"max_concurrent": 0}, "max_concurrent=0"),
    ({"scheduler": "asha"}, "scheduler='asha'"),
    ({"scheduler": {"type": "asha", "grace_period": "1"}}, "scheduler.grace_period='1'"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type='hyperband'"),
    ({"sampler": ["tpe"]}, "sampler=['tpe']"),
    ({"sampler": {"type": "tpe", "seed": "zero"}}, "sampler.seed='zero'"),
    ({"overrides": ["model.backbone=small_cnn"]}, "overrides=["),
    ({"resources": 2}, "resources=2"),
]


@pytest.mark.parametrize("change,named", BAD_SWEEPS)
def test_bad_sweep_fails_before_ray_naming_the_key(change, named, tmp_path, capsys):
    tree = yaml.safe_load(sweep_file(tmp_path, "/nowhere").read_text())
    tree.update(change)
    if tree["base"] is None:
        del tree["base"]
    assert_refused_before_ray(tree, tmp_path, capsys, named)


def test_objective_is_checked_against_the_methods_metrics(tmp_path):
    from mpcl.launch.sweep_spec import load_sweep

    base = yaml.safe_load(sweep_file(tmp_path, "/nowhere").read_text())
    mcl = {**base, "base": str(ROOT / "configs/fmnist_mcl.yaml"),
           "overrides": {**base["overrides"], "method.mode": "supervised", "data.min_per_class": 2},
           "objective": {"metric": "val/net1_top1", "mode": "max"},
           "space": {"method.alpha": {"type": "uniform", "low": 0.0, "high": 1.0}}, "points": []}
    path = tmp_path / "mcl.yaml"
    path.write_text(yaml.safe_dump(mcl))
    assert load_sweep(path).metric == "val/net1_top1"              # mcl's per-network metric
    for metric in ("train/attn_weight_max", "val/net2_top1"):      # simclr_attn's; a third network
        path.write_text(yaml.safe_dump({**mcl, "objective": {"metric": metric}}))
        with pytest.raises(Exception, match=f"objective.metric='{metric}': method mcl does not report it"):
            load_sweep(path)


def test_every_shipped_sweep_file_is_valid():
    from mpcl.launch.sweep_spec import load_sweep

    files = sorted((ROOT / "sweeps").glob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        assert load_sweep(f).num_samples >= 1, f


def test_results_tell_interrupted_trials_from_pruned_ones(tmp_path):
    """After Ctrl-C Tune marks every running trial TERMINATED, as if it had ended: the study,
    which Tune never told of their end, says they were interrupted (also one that had not
    reported yet)."""
    pytest.importorskip("ray.tune")
    from types import SimpleNamespace

    from mpcl.launch.search import make_searcher
    from mpcl.launch.sweep import collect_results
    from mpcl.launch.sweep_spec import SweepSpec
    from mpcl.launch.worker import OBJECTIVE_KEY

    spec = SweepSpec(name="unit", base=None, overrides={},
                     space={"method.temperature": {"type": "uniform", "low": 0.1, "high": 1.0}})
    searcher = make_searcher(spec, tmp_path, epochs=2)
    searcher.set_search_properties(None, None, {})
    r = lambda e, v: {OBJECTIVE_KEY: v, "epochs_done": e, "training_iteration": e}  # noqa: E731
    for tid in "abcd":
        searcher.suggest(tid)
    for tid, epochs in (("a", 2), ("b", 1), ("d", 1)):
        for e in range(1, epochs + 1):
            searcher.on_trial_result(tid, r(e, 50.0 + e))
    searcher.on_trial_complete("a", r(2, 52.0))               # finished
    searcher.on_trial_complete("d", r(1, 51.0))               # stopped by ASHA
    trials = [SimpleNamespace(trial_id=t, status="TERMINATED", config={"method.temperature": 0.5}) for t in "abcd"]
    results = [SimpleNamespace(metrics={**r(2, 52.0), "trial_id": "a"}, config=None, error=None),
               SimpleNamespace(metrics={**r(1, 51.0), "trial_id": "b"}, config=None, error=None),
               SimpleNamespace(metrics={}, config=None, error=None),
               SimpleNamespace(metrics={**r(1, 51.0), "trial_id": "d"}, config=None, error=None)]
    class Grid(list):  # a ResultGrid: its results, in the order of its (private) trials
        _experiment_analysis = SimpleNamespace(trials=trials)

    rows = {row["trial_id"]: row for row in collect_results(spec, tmp_path, Grid(results), epochs=2)}
    assert {t: rows[t]["state"] for t in "abcd"} == {"a": "complete", "b": "interrupted", "c": "interrupted",
                                                     "d": "pruned"}
    assert rows["b"]["reason"].startswith("interrupted after 1 of 2 epochs")
    assert rows["c"]["reason"].startswith("interrupted after 0 of 2 epochs")
    assert rows["d"]["reason"] == "stopped by ASHA after 1 of 2 epochs"
    assert json.loads((tmp_path / "results.json").read_text())["trials"][0]["trial_id"] == "a"


@pytest.mark.parametrize("text,named", [
    ("", "empty file"),
    ("name: x\nname: y\n", "duplicate key 'name' (lines 1 and 2)"),
    ("space:\n  method.temperature: {type: uniform, low: 0.1, high: 1}\n"
     "  method.temperature: {type: uniform, low: 0.2, high: 1}\n",
     "duplicate key 'space.method.temperature' (lines 2 and 3)"),
])
def test_empty_or_duplicate_key_sweep_file_is_one_line(text, named, tmp_path, capsys):
    from mpcl import cli

    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", str(path)])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {path}: {named}" if named != "empty file"
                                                            else f"error: {path}: empty file (expected a mapping)"]
