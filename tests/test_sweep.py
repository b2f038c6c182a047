"""Sweeps: a sweep of 3 tiny trials (one diverges) is interrupted, resumed, and finishes with
its finished trials kept; the Optuna study in SQLite holds every trial in the right state.
The searcher's PRUNED/FAIL/COMPLETE bookkeeping is checked without Ray as well."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _sweep_file(tmp_path, fmnist_path, **extra) -> Path:
    tree = {
        "name": "tiny", "base": str(ROOT / "configs/fmnist_simclr_attn.yaml"),
        "overrides": {"model.backbone": "small_cnn", "model.projector_hidden": 64, "model.projector_out": 32,
                      "data.loader": "torch", "data.path": fmnist_path, "data.subset": 256, "data.val_subset": 256,
                      "data.batch_size": 64, "data.num_workers": 0, "train.epochs": 2, "train.progress": "false",
                      "optim.name": "sgd", "optim.lr": 0.3, "optim.scale_lr": False, "optim.warmup_epochs": 0,
                      "tracking.wandb": "disabled"},
        "space": {"method.temperature": {"type": "loguniform", "low": 0.1, "high": 1.0},
                  "optim.lr": {"type": "choice", "values": [0.3, 1.0e30]}},
        "points": [{"method.temperature": 0.5, "optim.lr": 0.3},
                   {"method.temperature": 0.3, "optim.lr": 1.0e30},     # diverges at once
                   {"method.temperature": 0.2, "optim.lr": 0.3}],
        "objective": {"metric": "val/knn_top1", "mode": "max"},
        "num_samples": 3, "max_concurrent": 2, "scheduler": {"type": "none"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "use_gpu": "false"},
        "sampler": {"type": "tpe", "seed": 0}, "out": str(tmp_path / "sweep"),
    }
    tree.update(extra)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


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


def _env():
    env = dict(os.environ, MPCL_RAY_LOG_TO_DRIVER="0", MPCL_TUNE_VERBOSE="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.ray
def test_sweep_interrupted_resumed_keeps_finished_trials(tmp_path, fmnist_path):
    import optuna

    path = _sweep_file(tmp_path, fmnist_path)
    sweep_dir = tmp_path / "sweep"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "run.py", "sweep", str(path)], cwd=ROOT, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:   # one trial done, another started
        if _finished_trials(sweep_dir):
            break
        time.sleep(1)
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    kept = _finished_trials(sweep_dir)
    assert kept
    before = {p.name: (p / "metrics.jsonl").read_text() for p in kept}
    proc.send_signal(signal.SIGINT)                           # the driver is interrupted
    assert proc.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[-3000:]   # Tune stops gracefully
    log.close()

    done = subprocess.run([sys.executable, "run.py", "sweep", str(path), "--resume"], cwd=ROOT, env=_env(),
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

    rep = subprocess.run([sys.executable, "run.py", "report", str(sweep_dir)], cwd=ROOT, env=_env(),
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

    from mpcl.launch.sweep import OBJECTIVE_KEY, SweepSpec, make_searcher

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
    import run

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": str(ROOT / "configs/fmnist_simclr_attn.yaml"),
                                   "space": {"method.temprature": {"type": "uniform", "low": 0.1, "high": 1}}}))
    with pytest.raises(SystemExit) as e:
        run.main(["sweep", str(bad)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "method.temprature" in err


@pytest.mark.parametrize("name", ["fmnist_demo", "cifar10_simclr_attn", "cifar100_simclr_attn", "imagenet100_simclr_attn"])
def test_attention_sweeps_try_the_released_simclr_attn(name):
    """Every sweep over method.attention_weight has a point that is the released method:
    a = 1, attention temperature 1, the whole InfoNCE term weighted."""
    from mpcl.launch.sweep import load_sweep

    spec = load_sweep(ROOT / "sweeps" / f"{name}.yaml")
    assert "method.attention_weight" in spec.space
    released = [p for p in spec.points if p.get("method.attention_weight") == 1.0]
    assert released, name
    m = spec.config(released[0]).method
    assert (m.name, m.attention_weight, m.attention_temperature, m.attention_target) == \
        ("simclr_attn", 1.0, 1.0, "loss")
