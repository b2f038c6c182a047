"""A sweep's confirmation stage: the top trials and the baseline again on fresh seeds, the
paired difference, the verdict, best_config.yaml by confirmed mean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mpcl.launch import LaunchError
from mpcl.launch.confirm import BASELINE, candidates, verdict
from mpcl.launch.sweep_spec import load_sweep
from mpcl.tracking.sweep_results import confirmed_best
from tests.helpers.runs import tiny_sweep_overrides

ROOT = Path(__file__).resolve().parents[1]


def _tree(tmp_path, fmnist_path="/nonexistent", **extra) -> dict:
    tree = {
        "name": "tinyconfirm", "base": str(ROOT / "configs/fmnist_simclr_attn.yaml"),
        "overrides": tiny_sweep_overrides(fmnist_path, subset=128, epochs=1),
        "space": {"method.temperature": {"type": "loguniform", "low": 0.1, "high": 1.0}},
        "points": [{"method.temperature": 0.5}, {"method.temperature": 0.2}],
        "objective": {"metric": "val/knn_top1", "mode": "max"},
        "num_samples": 2, "max_concurrent": 2, "scheduler": {"type": "none"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "use_gpu": "false"},
        "sampler": {"type": "tpe", "seed": 0}, "out": str(tmp_path / "sweep"),
        "confirm": {"top_k": 1, "seeds": 2},
    }
    tree.update(extra)
    return tree


def _write(tmp_path, tree) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.mark.parametrize("value, needle", [({"top_k": 0, "seeds": 2}, "integers N >= 1"),
                                           ({"top_k": 1}, "expected {top_k: N, seeds: N}"),
                                           ({"top_k": 1, "seeds": 2, "asha": True}, "confirm"),
                                           (3, "confirm"), ({"top_k": 1.5, "seeds": 2}, "integers")])
def test_bad_confirm_is_one_line(tmp_path, value, needle):
    with pytest.raises(LaunchError) as e:
        load_sweep(_write(tmp_path, _tree(tmp_path, confirm=value)))
    assert needle in str(e.value) and str(tmp_path / "s.yaml") in str(e.value) and "\n" not in str(e.value)


def test_confirm_needs_a_baseline_point(tmp_path):
    tree = _tree(tmp_path)
    del tree["points"]
    with pytest.raises(LaunchError, match="confirm needs a points entry"):
        load_sweep(_write(tmp_path, tree))
    assert load_sweep(_write(tmp_path, _tree(tmp_path))).confirm == {"top_k": 1, "seeds": 2}


def test_candidates_are_the_baseline_then_the_best_complete_trials(tmp_path):
    spec = load_sweep(_write(tmp_path, _tree(tmp_path, confirm={"top_k": 2, "seeds": 3})))
    row = lambda tid, state, obj, t: {"trial_id": tid, "state": state, "objective": obj,  # noqa: E731
                                      "params": {"method.temperature": t}}
    rows = [row("a", "complete", 80.0, 0.5), row("b", "complete", 79.0, 0.3), row("c", "complete", 70.0, 0.9),
            row("d", "pruned", 85.0, 0.7)]   # best first, as collect_results sorts them
    assert candidates(spec, rows) == [(BASELINE, {"method.temperature": 0.5}), ("b", {"method.temperature": 0.3}),
                                      ("c", {"method.temperature": 0.9})]


def _confirm(values_by_label: dict[str, dict[int, float]], winner: str) -> dict:
    from mpcl.stats import paired_difference, summarize

    configs = [{"label": k, "params": {"method.temperature": i / 10}, "values": v,
                "summary": summarize(list(v.values())).as_dict(),
                "difference": paired_difference(values_by_label[BASELINE], v).as_dict(),
                "run_dirs": [f"/r/{k}/seed{s}" for s in v]} for i, (k, v) in enumerate(values_by_label.items())]
    return {"metric": "val/knn_top1", "seeds": 3, "top_k": 1, "baseline": BASELINE, "configs": configs,
            "winner": winner}


def test_verdict_says_whether_the_interval_excludes_zero():
    clear = _confirm({BASELINE: {1: 70.0, 2: 71.0, 3: 72.0}, "t1": {1: 72.0, 2: 73.1, 3: 73.9}}, "t1")
    assert "beats the baseline beyond the noise" in verdict(clear, "max")
    noisy = _confirm({BASELINE: {1: 70.0, 2: 71.0, 3: 72.0}, "t1": {1: 75.0, 2: 69.0, 3: 73.0}}, "t1")
    assert "includes 0: not beyond the noise" in verdict(noisy, "max")
    one = _confirm({BASELINE: {1: 70.0}, "t1": {1: 75.0}}, "t1")
    assert "no interval" in verdict(one, "max")
    assert "no searched configuration beats it" in verdict(clear | {"winner": BASELINE}, "max")
    best = confirmed_best({"confirm": clear})
    assert (best["trial_id"], best["run_dir"]) == ("t1", "/r/t1/seed1")
    assert best["objective"] == pytest.approx((72.0 + 73.1 + 73.9) / 3)


@pytest.mark.ray
def test_sweep_with_confirm_end_to_end(tmp_path, fmnist_path):
    path = _write(tmp_path, _tree(tmp_path, fmnist_path))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "run.py", "sweep", str(path)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-4000:]
    sweep_dir = tmp_path / "sweep"
    summary = json.loads((sweep_dir / "results.json").read_text())
    confirm = summary["confirm"]
    other = next(t for t in summary["trials"] if t["params"]["method.temperature"] == 0.2)
    assert [c["label"] for c in confirm["configs"]] == [BASELINE, other["trial_id"]]
    assert confirm["seed_values"] == [1, 2]   # fresh: the search trained seed 0
    measured = {}
    for c in confirm["configs"]:
        for run_dir, seed in zip(c["run_dirs"], (1, 2)):
            cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
            assert cfg["train"]["seed"] == seed and cfg["method"]["temperature"] == c["params"]["method.temperature"]
            last = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()][-1]
            assert c["values"][str(seed)] == last["val/knn_top1"]
            measured[c["label"], seed] = last["val/knn_top1"]
    diffs = [measured[other["trial_id"], s] - measured[BASELINE, s] for s in (1, 2)]
    assert confirm["configs"][1]["difference"]["mean"] == pytest.approx(sum(diffs) / 2)
    means = {c["label"]: c["summary"]["mean"] for c in confirm["configs"]}
    assert confirm["winner"] == max(means, key=means.get)
    assert "confirm: " in p.stderr and confirm["verdict"] in p.stderr
    r = subprocess.run([sys.executable, "run.py", "report", str(sweep_dir)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    best = (sweep_dir / "report" / "best_config.yaml").read_text()
    assert f"best trial {confirm['winner']} " in best and "confirmed mean over 2 seed(s)" in best
    winner = next(c for c in confirm["configs"] if c["label"] == confirm["winner"])
    assert yaml.safe_load(best)["method"]["temperature"] == winner["params"]["method.temperature"]
    page = (sweep_dir / "report" / "index.html").read_text()
    assert "Confirmation: 2 fresh seed(s)" in page


def test_best_config_is_the_confirmed_winner_not_the_search_best(tmp_path):
    from mpcl.report.sweep import best_config

    confirm = _confirm({BASELINE: {1: 70.0, 2: 71.0}, "t1": {1: 72.0, 2: 73.0}}, "t1")
    confirm["configs"][1]["run_dirs"] = [str(tmp_path / "confirm_t1_seed1")]
    Path(confirm["configs"][1]["run_dirs"][0]).mkdir()
    Path(confirm["configs"][1]["run_dirs"][0], "config.yaml").write_text("method: {temperature: 0.1}\n")
    (tmp_path / "search_t9").mkdir()
    (tmp_path / "search_t9" / "config.yaml").write_text("method: {temperature: 0.9}\n")
    summary = {"name": "s", "metric": "val/knn_top1", "confirm": confirm,
               "trials": [{"trial_id": "t9", "state": "complete", "objective": 80.0,
                           "run_dir": str(tmp_path / "search_t9"), "params": {}}]}
    best, text = best_config(summary, tmp_path)
    assert best["trial_id"] == "t1" and yaml.safe_load(text)["method"]["temperature"] == 0.1
    assert "72.5 (confirmed mean over 2 seed(s))" in text
    del summary["confirm"]
    best, text = best_config(summary, tmp_path)
    assert best["trial_id"] == "t9" and yaml.safe_load(text)["method"]["temperature"] == 0.9
