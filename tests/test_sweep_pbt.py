"""Population-based training in sweeps: knobs that cannot change mid-run are refused before
Ray starts, the scheduler mutates the space's knobs, and a PBT sweep of 4 tiny trials
exploits, keeps each trial's lineage in results.json and the report, and an exploited trial
continues from its donor's epoch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.helpers.sweeps import ROOT, sweep_env, sweep_file

PBT = {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5, "synch": True}
SPACE = {"method.temperature": {"type": "loguniform", "low": 0.1, "high": 1.0},
         "optim.lr": {"type": "choice", "values": [0.03, 0.1, 0.3]}}


def _pbt_file(tmp_path, fmnist_path, **extra):
    tree = {"scheduler": PBT, "sampler": {"type": "random", "seed": 0}, "space": SPACE, "points": [],
            "num_samples": 4, **extra}
    return sweep_file(tmp_path, fmnist_path, **tree)


@pytest.mark.parametrize("change,named", [
    ({"space": {"model.projector_out": {"type": "int", "low": 16, "high": 64}}}, "space.model.projector_out"),
    ({"space": {"data.batch_size": {"type": "choice", "values": [32, 64]}}}, "space.data.batch_size"),
    ({"space": {"method.temperature": SPACE["method.temperature"],
                "train.epochs": {"type": "int", "low": 1, "high": 3}}}, "space.train.epochs"),
    ({"sampler": {"type": "tpe", "seed": 0}}, "sampler.type='tpe'"),
    ({"confirm": {"top_k": 1, "seeds": 2}}, "confirm:"),
    ({"num_samples": 1}, "num_samples=1"),
    ({"scheduler": {**PBT, "grace_period": 1}}, "scheduler: grace_period"),
    ({"scheduler": {**PBT, "quantile_fraction": 0.9}}, "scheduler.quantile_fraction=0.9"),
    ({"scheduler": {**PBT, "perturbation_interval": 0}}, "scheduler.perturbation_interval=0"),
    ({"scheduler": {**PBT, "synch": "yes"}}, "scheduler.synch='yes'"),
])
def test_pbt_refuses_what_cannot_change_mid_run_before_ray(change, named, tmp_path, capsys):
    import ray

    from mpcl import cli

    path = _pbt_file(tmp_path, "/nowhere", **change)
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and str(path) in err, err
    if named.startswith("space."):
        assert "pbt may mutate only optim.lr" in err
    assert not ray.is_initialized() and not (tmp_path / "sweep").exists()


def test_pbt_scheduler_mutates_the_space_within_its_bounds(tmp_path):
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.search.sample import Float

    from mpcl.launch.search import make_scheduler, population_searcher
    from mpcl.launch.sweep_rules import PBT_MUTABLE
    from mpcl.launch.sweep_spec import load_sweep
    from mpcl.launch.worker import EPOCHS_KEY, OBJECTIVE_KEY

    assert {"optim.lr", "method.temperature", "method.attention_weight", "method.bank_mix"} <= set(PBT_MUTABLE)
    spec = load_sweep(_pbt_file(tmp_path, "/nowhere", scheduler={"type": "pbt"}))
    assert spec.scheduler == {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.25,
                              "resample_probability": 0.25, "synch": False}
    pbt = make_scheduler(load_sweep(_pbt_file(tmp_path, "/nowhere")), epochs=2)
    assert isinstance(pbt, PopulationBasedTraining)
    assert (pbt._time_attr, pbt._metric, pbt._perturbation_interval, pbt._quantile_fraction, pbt._synch) == \
        (EPOCHS_KEY, OBJECTIVE_KEY, 1, 0.5, True)
    mutations = pbt._hyperparam_mutations
    assert set(mutations) == set(SPACE) and mutations["optim.lr"] == [0.03, 0.1, 0.3]
    temperature = mutations["method.temperature"]
    assert isinstance(temperature, Float) and (temperature.lower, temperature.upper) == (0.1, 1.0)
    # explore's x1.2 / x0.8 stays in the space
    assert pbt._custom_explore_fn({"method.temperature": 1.2, "optim.lr": 0.3})["method.temperature"] == 1.0
    assert pbt._custom_explore_fn({"method.temperature": 0.08, "optim.lr": 0.3})["method.temperature"] == 0.1
    # a trial at its last epoch is left alone (PBT's own bookkeeping would need the trial's state)
    assert pbt.on_trial_result(None, None, {EPOCHS_KEY: 2, OBJECTIVE_KEY: 50.0}) == "CONTINUE"
    assert population_searcher(spec).__class__.__name__ == "BasicVariantGenerator"   # PBT refuses Optuna


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _interrupt_at_first_exploit(path, sweep_dir, log_path):
    """Runs the sweep until a trial has exploited (its own run moved aside), then interrupts
    the driver as Ctrl-C does."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "run.py", "sweep", str(path)], cwd=ROOT, env=sweep_env(),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 900
            while not list((sweep_dir / "trials").glob("*.old-*")):
                assert proc.poll() is None, "the sweep ended before an exploit:\n" + log_path.read_text()[-3000:]
                assert time.time() < deadline, "no exploit after 900 s:\n" + log_path.read_text()[-3000:]
                time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 0, log_path.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.ray
@pytest.mark.slow
def test_pbt_sweep_exploits_records_lineage_and_resumes(tmp_path, fmnist_path):
    """4 trials of 2 epochs, 2 at a time; after epoch 1 the worse half exploits the better half
    (synch). The driver is interrupted at the first exploit and --resume finishes the sweep."""
    path = _pbt_file(tmp_path, fmnist_path, max_concurrent=2)
    sweep_dir = tmp_path / "sweep"
    _interrupt_at_first_exploit(path, sweep_dir, tmp_path / "first.log")
    interrupted = json.loads((sweep_dir / "results.json").read_text())["trials"]
    assert "interrupted" in {t["state"] for t in interrupted}, interrupted
    done = subprocess.run([sys.executable, "run.py", "sweep", str(path), "--resume"], cwd=ROOT, env=sweep_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((sweep_dir / "results.json").read_text())
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert len(trials) == 4 and {t["state"] for t in trials.values()} == {"complete"}, summary
    cloned = [t for t in trials.values() if t["clones"]]
    assert cloned, summary                                   # at least one exploit
    for t in trials.values():   # a knob row for every epoch trained; its knobs now are those of the last
        assert [row["epoch"] for row in t["schedule"]] == [1, 2], t
        assert t["schedule"][-1] == {"epoch": 2, **t["params"]}, t
    for t in cloned:
        clone = t["clones"][-1]
        donor, at = sweep_dir / "trials" / clone["from"], clone["epochs_done"]
        recipient = sweep_dir / "trials" / t["trial_id"]
        # its record continues the donor's: the donor's epochs up to the clone, then its own
        assert _metrics(recipient)[:at] == _metrics(donor)[:at]
        assert [m["epoch"] for m in _metrics(recipient)] == [0, 1]
        assert t["schedule"][:at] == [{"epoch": row["epoch"], **{k: row[k] for k in SPACE}}
                                      for row in trials[clone["from"]]["schedule"][:at]]
        assert list((sweep_dir / "trials").glob(f"{t['trial_id']}.old-*"))   # its own run kept aside
        assert at < 2   # no exploit at the last epoch, which would train nothing more
    rep = subprocess.run([sys.executable, "run.py", "report", str(sweep_dir)], cwd=ROOT, env=sweep_env(),
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    page = (sweep_dir / "report" / "index.html").read_text()
    assert "Lineage (PBT)" in page
    for t in cloned:
        assert f"from {t['clones'][-1]['from']} after epoch {t['clones'][-1]['epochs_done']}" in page
    assert list((sweep_dir / "report").glob("schedule_*_method_temperature.png"))
    assert yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["scheduler"]["type"] == "pbt"


@pytest.mark.parametrize("method,buffer,knob", [("moco", "queue.keys", "temperature"),
                                                ("simsiam_multi", "bank.snapshot", "bank_mix")])
def test_exploit_continues_the_donors_state_under_the_new_knobs(method, buffer, knob, tmp_path, monkeypatch):
    """Without Ray: a recipient given a donor's Tune checkpoint starts from the donor's state
    (its queue or memory bank included) after the donor's epoch, its own run moved aside, with
    the learning rate and the method's knob (temperature, bank mix) of its own config in effect."""
    import ray.tune
    import torch
    from ray.train import Checkpoint

    from mpcl.config.compose import load
    from mpcl.engine import checkpoint as ckpt
    from mpcl.engine.loop import checkpoint_state, resume
    from mpcl.engine.optim import base_lr, build_optimizer
    from mpcl.engine.runtime import runtime
    from mpcl.launch.pbt import read_lineage, start_from_donor
    from mpcl.methods import build_method
    from tests.helpers.runs import tiny_overrides

    trials = tmp_path / "trials"

    def trial(name, lr, value):
        cfg = load(None, tiny_overrides(trials / name, method, **{"optim.lr": lr, f"method.{knob}": value}))
        model = build_method(cfg, 10, 16)
        return cfg, model, build_optimizer(cfg, model.param_groups())

    donor_cfg, donor, donor_opt = trial("donor", 0.3, 0.2)
    saved = dict(donor.named_buffers())[buffer]
    saved.copy_(torch.randn_like(saved.float()).to(saved.dtype))   # a state a fresh method would not have
    (trials / "donor").mkdir(parents=True)
    (trials / "donor" / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n')
    folder = tmp_path / "tune_checkpoint"
    folder.mkdir()
    ckpt.save_atomic(checkpoint_state(donor, donor_opt, None, 1, 8, donor_cfg, {}), folder / "state.pt")
    assert buffer in ckpt.load(folder / "state.pt")["model"]          # the engine saves the buffer

    cfg, recipient, optimizer = trial("recipient", 0.05, 0.7)
    (trials / "recipient").mkdir()
    (trials / "recipient" / "metrics.jsonl").write_text('{"epoch": 0}\n')   # its own run so far
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: Checkpoint.from_directory(str(folder)))
    assert start_from_donor(cfg) == "donor"
    assert read_lineage(trials / "recipient")["clones"] == [{"from": "donor", "epochs_done": 2}]
    assert [p.name.split(".old-")[0] for p in trials.glob("recipient.old-*")] == ["recipient"]
    assert (trials / "recipient" / "metrics.jsonl").read_text().count("epoch") == 3   # the donor's record

    state = ckpt.load(trials / "recipient" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    resume(cfg, state, recipient, optimizer, runtime(cfg))
    assert torch.equal(dict(recipient.named_buffers())[buffer], saved)
    assert optimizer.param_groups[0]["lr"] == base_lr(cfg) != base_lr(donor_cfg)
    assert getattr(recipient.params, knob) == 0.7


def test_pbt_results_hold_lineage_and_tell_interrupted_trials(tmp_path):
    """Without Ray: PBT stops no trial early, so one that Tune terminated (Ctrl-C) before the
    last epoch is interrupted; a row's knobs are the trial's now (its last result may be its
    donor's), with its lineage.json; no Optuna study is opened or written."""
    from types import SimpleNamespace

    from mpcl.launch.pbt import LINEAGE_FILE
    from mpcl.launch.sweep import collect_results
    from mpcl.launch.sweep_spec import SweepSpec
    from mpcl.launch.worker import EPOCHS_KEY, OBJECTIVE_KEY

    spec = SweepSpec(name="unit", base=None, overrides={}, space={"method.temperature": SPACE["method.temperature"]},
                     scheduler={"type": "pbt"})
    lineage = {"clones": [{"from": "a", "epochs_done": 1}],
               "schedule": [{"epoch": 1, "method.temperature": 0.5}, {"epoch": 2, "method.temperature": 0.6}]}
    (tmp_path / "trials" / "b").mkdir(parents=True)
    (tmp_path / "trials" / "b" / LINEAGE_FILE).write_text(json.dumps(lineage))
    trials = [SimpleNamespace(trial_id=t, status="TERMINATED", config={"method.temperature": v})
              for t, v in (("a", 0.5), ("b", 0.6), ("c", 0.2))]
    results = [SimpleNamespace(metrics={OBJECTIVE_KEY: 60.0 + e, EPOCHS_KEY: e}, error=None,
                               config={"method.temperature": 0.5}) for e in (2, 2, 1)]

    class Grid(list):  # a ResultGrid: its results, in the order of its (private) trials
        _experiment_analysis = SimpleNamespace(trials=trials)

    rows = {row["trial_id"]: row for row in collect_results(spec, tmp_path, Grid(results), epochs=2)}
    assert {t: rows[t]["state"] for t in "abc"} == {"a": "complete", "b": "complete", "c": "interrupted"}
    assert rows["b"]["params"] == {"method.temperature": 0.6}
    assert (rows["b"]["clones"], rows["b"]["schedule"]) == (lineage["clones"], lineage["schedule"])
    assert rows["a"]["clones"] == [] and rows["a"]["schedule"] == []
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["scheduler"] == "pbt" and summary["storage"] is None
    assert not (tmp_path / "optuna.db").exists()
