"""The results dashboard, from a sweep directory made by hand (no Ray): one self-contained
HTML page with every trial, the best config as YAML, the plots inline and as PNG files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import yaml

from mpcl import cli
from mpcl.config import dump
from mpcl.config.compose import load


def _make_sweep(d: Path, complete: int = 2) -> list[dict]:
    storage = f"sqlite:///{d / 'optuna.db'}"
    study = optuna.create_study(study_name="hand", storage=storage, direction="maximize")
    dist = {"method.temperature": optuna.distributions.FloatDistribution(0.1, 1.0, log=True)}
    rows = []
    specs = [("t_best", "complete", 0.2, [60, 70, 80]), ("t_second", "complete", 0.5, [55, 65, 75]),
             ("t_pruned", "pruned", 0.9, [40]), ("t_failed", "failed", 0.3, [])][: complete] + \
            [("t_pruned", "pruned", 0.9, [40]), ("t_failed", "failed", 0.3, [])]
    for tid, state, temp, values in specs:
        run_dir = d / "trials" / tid
        run_dir.mkdir(parents=True)
        dump(load(None, {"method.temperature": temp, "out": str(run_dir)}), run_dir / "config.yaml")
        (run_dir / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "train/loss": 5.0 - e, "val/knn_top1": v}) + "\n" for e, v in enumerate(values)))
        ot_state = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}[state]
        study.add_trial(optuna.trial.create_trial(
            params={"method.temperature": temp}, distributions=dist,
            value=values[-1] if state == "complete" else None,
            intermediate_values={i + 1: v for i, v in enumerate(values)},
            state=getattr(optuna.trial.TrialState, ot_state), user_attrs={"ray_trial_id": tid}))
        rows.append({"trial_id": tid, "state": state, "params": {"method.temperature": temp},
                     "objective": values[-1] if values else None, "epochs_done": len(values),
                     "reason": "diverged at epoch 0 step 1" if state == "failed" else "", "run_dir": str(run_dir)})
    return rows


def test_report_of_a_sweep(tmp_path, capsys):
    rows = _make_sweep(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps(
        {"name": "hand", "metric": "val/knn_top1", "mode": "max", "epochs": 3, "trials": rows}))
    out = tmp_path / "elsewhere" / "dash.html"
    cli.main(["report", str(tmp_path), "--out", str(out)])
    assert str(out) in capsys.readouterr().out
    page = out.read_text()
    for r in rows:
        assert r["trial_id"] in page
    assert "diverged at epoch 0 step 1" in page and "pruned" in page
    assert not re.search(r"<script|<link|src=\"http", page)           # opens offline
    assert page.count("data:image/png;base64,") >= 4                  # curves x2, scatter, importances
    best = yaml.safe_load((out.parent / "best_config.yaml").read_text())
    assert best["method"] == {"name": "simclr", "temperature": 0.2}    # t_best; only its method's keys
    assert "t_best" in (out.parent / "best_config.yaml").read_text()
    assert {p.name for p in out.parent.glob("*.png")} >= {"curves_objective.png", "curves_loss.png", "importances.png"}
    # the table is sorted by the objective: complete best first, failed last
    order = [page.index(f">{r}<") for r in ("t_best", "t_second", "t_pruned", "t_failed")]
    assert order == sorted(order)


def test_report_of_an_interrupted_sweep_reads_the_study(tmp_path):
    _make_sweep(tmp_path, complete=1)                                 # no results.json
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "hand", "objective": {"metric": "val/knn_top1"}}))
    path = cli.main(["report", str(tmp_path)]) or tmp_path / "report" / "index.html"
    page = Path(path).read_text()
    assert "t_best" in page and "t_failed" in page
    assert "needs at least 2 complete trials" in page                 # importances: handled


def test_report_of_a_run_and_of_nothing(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train/loss": 3.0 - e, "val/knn_top1": 50.0 + e}) + "\n" for e in range(3)))
    cli.main(["report", str(tmp_path)])
    assert "val/knn_top1" in (tmp_path / "report" / "index.html").read_text()
    with pytest.raises(SystemExit) as e:
        cli.main(["report", str(tmp_path / "report")])
    assert e.value.code == 2


def test_report_skips_lines_of_metrics_jsonl_that_are_not_epochs(tmp_path, capsys):
    good = [json.dumps({"epoch": e, "train/loss": 3.0 - e, "val/knn_top1": 50.0 + e}) for e in range(3)]
    junk = ["[1, 2, 3]", "42", '"text"', "null", '{"no_epoch": 1}', '{"epoch": "1"}', "{torn", "\u00ff"]
    (tmp_path / "metrics.jsonl").write_text("\n".join([good[0], *junk[:4], good[1], *junk[4:], good[2]]) + "\n")
    cli.main(["report", str(tmp_path)])
    page = (tmp_path / "report" / "index.html").read_text()
    assert "3 epochs" in page and page.count("data:image/png;base64,") >= 2
    from mpcl.tracking import read_metrics

    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1, 2]


@pytest.mark.parametrize("text", ["[1, 2]", "{torn", '{"trials": [["t1", "complete"]]}', '{"name": "x"}'])
def test_report_of_a_damaged_results_json_is_one_line(text, tmp_path, capsys):
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(SystemExit) as e:
        cli.main(["report", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.json" in err[0], err
