"""What runs and sweeps print: a sweep's trial events as plain lines or one table, the epochs
of a Ray run as --no-ray prints them. Fake trials stand in for Ray Tune's (no Ray here)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mpcl.launch.console import RunView, SweepView
from mpcl.launch.worker import EPOCHS_KEY, FAILED_FILE, LOG_DIR, OBJECTIVE_KEY

SPEC = SimpleNamespace(metric="val/knn_top1", mode="max", objectives=[("val/knn_top1", "max")], num_samples=4,
                       space={"method.temperature": {}, "method.attention_weight": {}})


def _trial(trial_id: str, temperature: float, error_file: Path | None = None):
    return SimpleNamespace(trial_id=trial_id, config={"method.temperature": temperature,
                                                      "method.attention_weight": 0.5},
                           error_file=str(error_file) if error_file else None)


def _result(epochs: int, value: float) -> dict:
    return {EPOCHS_KEY: epochs, OBJECTIVE_KEY: value}


def _sweep(tmp_path, stream):
    """Four trials of up to 3 epochs: a complete one, one pruned after 1, one diverged (its
    FAILED.json), one crashed (Tune's error file only, its worker's log written); none waits."""
    view = SweepView(SPEC, 3, tmp_path, stream=stream, live=False)
    view.setup()
    a, b, c, d = (_trial("aaaa", 0.5), _trial("bbbb", 0.2), _trial("cccc", 0.1),
                  _trial("dddd", 0.3, tmp_path / "error.txt"))
    for t in (a, b, c, d):
        view.on_trial_start(0, [], t)
    view.on_trial_result(0, [], a, _result(1, 60.0))
    view.on_trial_result(0, [], b, _result(1, 50.0))
    view.on_trial_result(0, [], a, {"epoch": 0})                      # a repeated report: no new line
    view.on_trial_complete(0, [], b)
    (tmp_path / "trials" / "cccc").mkdir(parents=True)
    (tmp_path / "trials" / "cccc" / FAILED_FILE).write_text(json.dumps({"reason": "diverged at epoch 0 step 3",
                                                                       "kind": "diverged"}))
    view.on_trial_error(0, [], c)
    (tmp_path / "error.txt").write_text("Failure # 1\nTraceback (most recent call last):\n  File x\n"
                                        "ray.train.WorkerGroupError: Training failed due to worker errors:\n"
                                        "[Rank 0 Error Snippet]:\nRuntimeError: out of coffee\n")
    log = tmp_path / "trials" / "dddd" / LOG_DIR / "worker-0.log"
    log.parent.mkdir(parents=True)
    log.write_text("Traceback ...\nRuntimeError: out of coffee\n")
    view.on_trial_error(0, [], d)
    for epochs, value in ((2, 62.0), (3, 64.5)):
        view.on_trial_result(0, [], a, _result(epochs, value))
    view.on_trial_complete(0, [], a)
    view.on_experiment_end([])
    return view, log


def test_off_a_terminal_each_trial_event_is_one_plain_line(tmp_path):
    stream = io.StringIO()
    _, log = _sweep(tmp_path, stream)
    assert stream.getvalue().splitlines() == [
        "trial aaaa started: method.temperature=0.5 method.attention_weight=0.5",
        "trial bbbb started: method.temperature=0.2 method.attention_weight=0.5",
        "trial cccc started: method.temperature=0.1 method.attention_weight=0.5",
        "trial dddd started: method.temperature=0.3 method.attention_weight=0.5",
        "trial aaaa epoch 1/3: val/knn_top1=60",
        "trial bbbb epoch 1/3: val/knn_top1=50",
        "trial bbbb pruned after 1/3 epochs: val/knn_top1=50",
        "trial cccc failed: diverged at epoch 0 step 3",
        f"trial dddd failed: RuntimeError: out of coffee (log: {log})",
        "trial aaaa epoch 2/3: val/knn_top1=62",
        "trial aaaa epoch 3/3: val/knn_top1=64.5",
        "trial aaaa complete: val/knn_top1=64.5 (best so far)",
    ]


def test_on_a_terminal_one_table_holds_every_trial_the_counts_and_the_best(tmp_path):
    from rich.console import Console

    view, _ = _sweep(tmp_path, io.StringIO())
    console = Console(file=io.StringIO(), width=150, color_system=None)
    console.print(view.table())
    text = console.file.getvalue()
    assert text.splitlines()[0].startswith("1 complete, 1 pruned, 2 failed, 0 running, 0 waiting; ")
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in text.splitlines() if line.startswith("│")}
    assert rows == {"aaaa": ["complete", "3/3", "64.5", "0.5", "0.5"], "bbbb": ["pruned", "1/3", "50", "0.2", "0.5"],
                    "cccc": ["failed", "0/3", "", "0.1", "0.5"], "dddd": ["failed", "0/3", "", "0.3", "0.5"]}
    assert "best: trial aaaa val/knn_top1=64.5 (method.temperature=0.5 method.attention_weight=0.5)" in text


def test_the_time_left_counts_the_epochs_still_to_train_at_the_pace_so_far(tmp_path):
    view = SweepView(SPEC, 4, tmp_path, stream=io.StringIO(), live=False)
    assert view.left_s() is None                           # no pace yet
    for trial_id in ("aaaa", "bbbb"):
        view.on_trial_start(0, [], _trial(trial_id, 0.5))
    view.on_trial_result(0, [], _trial("aaaa", 0.5), _result(2, 1.0))
    view.t0 = time.monotonic() - 20                        # 2 trial-epochs in 20 s
    # aaaa 2 more, bbbb 4, two trials waiting 4 each: 14 trial-epochs at 10 s
    assert view.left_s() == pytest.approx(140, rel=0.01)
    assert "at most 2:2" in view._status()


def test_a_min_objective_ranks_the_smallest_first(tmp_path):
    spec = SimpleNamespace(**{**vars(SPEC), "mode": "min", "objectives": [("val/knn_top1", "min")]})
    view = SweepView(spec, 3, tmp_path, stream=io.StringIO(), live=False)
    for trial_id, value in (("aaaa", 2.0), ("bbbb", 1.0)):
        view.on_trial_start(0, [], _trial(trial_id, 0.5))
        view.on_trial_result(0, [], _trial(trial_id, 0.5), _result(1, value))
    assert view.best().trial_id == "bbbb"


def test_a_ray_run_prints_each_epoch_as_no_ray_does_once(tmp_path):
    """A resumed run's earlier epochs are not printed again, but one it trains again is (its
    line was logged, its checkpoint was not); epochs written while it runs are, in order, each
    once."""
    from mpcl.tracking import MetricsLog, summary_line

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"epoch": 0, "train/loss": 3.0})
    log.append({"epoch": 1, "train/loss": 2.6})             # logged; the run died before its checkpoint
    stream = io.StringIO()
    rows = [{"epoch": 1, "train/loss": 2.5, "val/knn_top1": 41.0}, {"epoch": 2, "train/loss": 2.0}]
    with RunView(tmp_path, 3, stream=stream, interval=0.02):
        time.sleep(0.1)
        log.truncate_after(0)                                # the resumed run replays epoch 1
        for row in rows:
            log.append(row)
            time.sleep(0.1)
    assert stream.getvalue().splitlines() == [summary_line(r) for r in rows]
