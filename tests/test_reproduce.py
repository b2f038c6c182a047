"""run.py reproduce: the four methods at equal budget over seeds, RESULTS.md and the report,
and a rerun that keeps finished runs and finishes the unfinished one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mpcl.launch import LaunchError
from mpcl.launch import reproduce as rp

ROOT = Path(__file__).resolve().parents[1]


def test_runs_share_the_budget_and_carry_the_papers_knobs(tmp_path):
    runs = rp.build_runs("fashion_mnist", "smoke", 2, tmp_path, ["data.subset=512"])
    assert [(c.method.name, c.train.seed) for c in runs] == [(m, s) for m in rp.METHODS for s in (0, 1)]
    assert len({c.out for c in runs}) == 8
    for c in runs:
        assert (c.model.backbone, c.train.epochs, c.data.subset) == ("small_cnn", 2, 512)
    knobs = {c.method.name: {k: getattr(c.method, k) for k in ("attention_weight", "bank_mix") if hasattr(c.method, k)}
             for c in runs}
    assert knobs == {"simclr": {}, "simclr_attn": {"attention_weight": 1.0}, "simsiam": {},
                     "simsiam_multi": {"bank_mix": 0.5}}                    # each method gets its own knobs
    multi = next(c for c in runs if c.method.name == "simsiam_multi")
    # the preset's warm-ups (10 of 100 epochs) scaled to the budget's 2 epochs
    assert multi.optim.warmup_epochs == pytest.approx(0.2)
    assert multi.method.bank_warmup_epochs == 0
    simclr = next(c for c in runs if c.method.name == "simclr")
    assert simclr.optim.warmup_epochs == pytest.approx(0.02)
    paper = rp.build_runs("cifar10", "paper", 1, tmp_path)
    assert {c.method.name: c.train.epochs for c in paper}["simsiam_multi"] == 1000
    assert next(c for c in paper if c.method.name == "simsiam_multi").method.bank_warmup_epochs == 50
    short = rp.build_runs("fashion_mnist", "short", 1, tmp_path)
    assert all(c.model.backbone == "resnet18" and c.data.subset == 0 and c.train.epochs == 15 for c in short)


# The budgets as they were written in reproduce.py before they became configs/parts/budget/*.yaml:
# the reference the parts must keep giving.
OLD_BUDGETS = {
    "smoke": {"linear_epochs": 10, "overrides": {
        "model.backbone": "small_cnn", "model.projector_hidden": 256, "model.projector_out": 128,
        "model.predictor_hidden": 64, "data.loader": "torch", "data.num_workers": 0, "data.subset": 2048,
        "data.val_subset": 1000, "data.batch_size": 256, "train.epochs": 2, "tracking.wandb": "disabled",
        "scale.cpus_per_worker": 1, "scale.use_gpu": "false", "train.progress": "false"}},
    "short": {"linear_epochs": 100, "overrides": {
        "model.backbone": "resnet18", "model.cifar_stem": True, "data.subset": 0, "data.val_subset": 0,
        "train.epochs": 15, "scale.gpus_per_worker": 0.25, "scale.cpus_per_worker": 3, "train.progress": "false"}},
    "paper": {"linear_epochs": 100, "overrides": {"train.progress": "false"}},
}


def test_budgets_are_the_parts_and_keep_their_values():
    assert tuple(OLD_BUDGETS) == rp.BUDGETS
    for name, old in OLD_BUDGETS.items():
        assert rp.budget_overrides(name) == old["overrides"], name
        assert rp.LINEAR_EPOCHS[name] == old["linear_epochs"], name


def test_a_pair_that_differs_outside_its_method_is_refused(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs" / "parts", configs / "parts")   # what the presets compose
    for m in rp.METHODS:
        text = (ROOT / "configs" / f"fmnist_{m}.yaml").read_text()
        if m == "simsiam_multi":
            text = text.replace("batch_size: 256", "batch_size: 128")
        (configs / f"fmnist_{m}.yaml").write_text(text)
    monkeypatch.setattr(rp, "preset_path", lambda dataset, method: configs / f"fmnist_{method}.yaml")
    with pytest.raises(LaunchError, match="simsiam and simsiam_multi .* data.batch_size"):
        rp.build_runs("fashion_mnist", "paper", 1, tmp_path / "out")
    rp.build_runs("fashion_mnist", "paper", 1, tmp_path / "out", ["data.batch_size=64"])  # made equal: fine


def test_bad_arguments_are_one_line(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    from mpcl import cli

    for args, needle in ((["--dataset", "mnist9"], "no preset configs/mnist9_simclr.yaml"),
                         (["--seeds", "0"], "--seeds 0"),
                         (["train.epochs=zero"], "train.epochs")):
        with pytest.raises(SystemExit) as e:
            cli.main(["reproduce", "--no-ray", "--out", str(tmp_path / "o"), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_reproduce_smoke_end_to_end_and_resume(tmp_path, fmnist_path):
    out = tmp_path / "rep"
    cmd = [sys.executable, "run.py", "reproduce", "--no-ray", "--budget", "smoke", "--seeds", "2", "--out", str(out),
           f"data.path={fmnist_path}", "data.subset=128", "data.val_subset=128", "data.batch_size=64"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "reproduce.json").read_text())
    results = {}
    for m in rp.METHODS:
        for s in (0, 1):
            r = json.loads((out / "runs" / m / f"seed{s}" / "result.json").read_text())
            assert r["metrics"]["epoch"] == 1 and 0 < r["eval"]["linear_top1"] <= 100
            results[m, s] = r["eval"]
        got = summary["methods"][m]
        assert got["knn_top1"]["n"] == got["linear_top1"]["n"] == 2
        assert got["linear_top1"]["mean"] == pytest.approx(
            (results[m, 0]["linear_top1"] + results[m, 1]["linear_top1"]) / 2)
    for pair in summary["pairs"]:
        base, variant = pair["base"], pair["variant"]
        diffs = [results[variant, s]["knn_top1"] - results[base, s]["knn_top1"] for s in (0, 1)]
        d = pair["knn_top1"]
        assert d["mean"] == pytest.approx(sum(diffs) / 2)
        half = 12.706205 * abs(diffs[0] - diffs[1]) / 2  # n = 2: sd / sqrt(2) = |d0 - d1| / 2
        assert (d["low"], d["high"]) == pytest.approx((d["mean"] - half, d["mean"] + half))
    md = (out / "RESULTS.md").read_text()
    assert md in p.stdout
    for label in ("| SimCLR |", "| SimCLR-Attn |", "| SimSiam |", "| SimSiam-Multi |", "SimCLR-Attn - SimCLR",
                  "SimSiam-Multi - SimSiam", "The paper's numbers (not ours)", "| ResNet-50 | SimCLR-Attn | 89.4 |"):
        assert label in md
    page = (out / "report" / "index.html").read_text()
    assert "numbers (not ours)" in page and "SimSiam-Multi − SimSiam" in page

    # rerun: everything finished is kept; a run without its result.json finishes (no retraining)
    kept = out / "runs" / "simclr" / "seed1" / "result.json"
    redo = out / "runs" / "simsiam_multi" / "seed0" / "result.json"
    mtime = kept.stat().st_mtime_ns
    redo.unlink()
    lines = (out / "runs" / "simsiam_multi" / "seed0" / "metrics.jsonl").read_text().splitlines()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "7 of 8 run(s) already finished: kept" in p.stderr
    assert "[1/1] simsiam_multi seed 0" in p.stderr
    assert kept.stat().st_mtime_ns == mtime
    assert json.loads(redo.read_text())["eval"] == results["simsiam_multi", 0]
    assert (out / "runs" / "simsiam_multi" / "seed0" / "metrics.jsonl").read_text().splitlines() == lines


@pytest.mark.ray
def test_a_ray_run_is_trained_and_evaluated_once(tmp_path, fmnist_path, monkeypatch):
    import ray

    from mpcl.launch.repeat import latest_ray_checkpoint, run_all

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    (cfg,) = [c for c in rp.build_runs("fashion_mnist", "smoke", 1, tmp_path, [
        f"data.path={fmnist_path}", "data.subset=128", "data.val_subset=128", "data.batch_size=64", "train.epochs=1"])
        if c.method.name == "simsiam_multi"]
    try:
        (result,) = run_all([cfg], use_ray=True, linear_epochs=3)
        assert result["metrics"]["epoch"] == 0 and result["eval"]["method"] == "simsiam_multi"
        assert result["eval"]["checkpoint"] == str(latest_ray_checkpoint(cfg.out))
        messages = []
        assert run_all([cfg], use_ray=True, linear_epochs=3, log=messages.append) == [result]
        assert messages == ["1 of 1 run(s) already finished: kept"]
    finally:
        ray.shutdown()


def test_finished_runs_are_kept_without_training(tmp_path, monkeypatch):
    from mpcl.launch import repeat

    runs = rp.build_runs("fashion_mnist", "smoke", 1, tmp_path)
    done = {"metrics": {"epoch": 1}, "eval": {"knn_top1": 50.0, "linear_top1": 60.0}}
    for c in runs[:3]:
        Path(c.out).mkdir(parents=True)
        (Path(c.out) / repeat.RESULT_FILE).write_text(json.dumps(done))
    trained = []
    monkeypatch.setattr(repeat, "run_local", lambda cfg, linear_epochs: trained.append(cfg.method.name))
    messages = []
    results = repeat.run_all(runs, use_ray=False, linear_epochs=1, log=messages.append)
    assert trained == ["simsiam_multi"] and results[:3] == [done] * 3 and results[3] is None
    assert messages[0] == "3 of 4 run(s) already finished: kept"
