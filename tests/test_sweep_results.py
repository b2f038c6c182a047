"""What a sweep leaves behind, read the same by the sweep and by the report: the rows' order,
the table, results.json and the Optuna study's URL."""

from __future__ import annotations

import json

import pytest

from mpcl.tracking.sweep_results import (RESULTS_FILE, format_table, open_study, sort_rows, storage_url,
                                         write_results)


def _row(tid, state, objective, **params):
    return {"trial_id": tid, "state": state, "reason": "", "params": params, "objective": objective,
            "epochs_done": 2, "run_dir": f"/x/{tid}"}


ROWS = [_row("p", "pruned", 99.0), _row("f", "failed", None), _row("lo", "complete", 40.0),
        _row("i", "interrupted", 80.0), _row("hi", "complete", 60.0), _row("none", "complete", None)]


def test_rows_complete_first_then_best_objective_first():
    assert [r["trial_id"] for r in sort_rows(ROWS, "max")] == ["hi", "lo", "none", "p", "i", "f"]
    assert [r["trial_id"] for r in sort_rows(ROWS, "min")] == ["lo", "hi", "none", "p", "i", "f"]


def test_table_has_a_column_per_searched_key_and_one_line_per_trial():
    rows = [_row("a", "complete", 61.25, **{"method.temperature": 0.123456}), _row("b", "failed", None)]
    lines = format_table(rows, "val/knn_top1").splitlines()
    assert lines[0].split() == ["trial", "state", "val/knn_top1", "epochs", "method.temperature", "reason"]
    assert lines[2].split() == ["a", "complete", "61.25", "2", "0.1235"]
    assert lines[3].split()[:2] == ["b", "failed"] and len(lines) == 4


def test_results_written_whole_and_the_study_found_by_name(tmp_path):
    optuna = pytest.importorskip("optuna")
    write_results(tmp_path, {"trials": ROWS})
    assert json.loads((tmp_path / RESULTS_FILE).read_text())["trials"] == ROWS
    assert [p.name for p in tmp_path.iterdir()] == [RESULTS_FILE]          # no temp file left
    url = storage_url(tmp_path)
    assert url == f"sqlite:///{(tmp_path / 'optuna.db').resolve()}"
    assert open_study(url, "a") is None and open_study(url) is None          # an empty database
    optuna.create_study(study_name="a", storage=url)
    optuna.create_study(study_name="b", storage=url)
    assert open_study(url, "b").study_name == "b"
    assert open_study(url, "c") is None
    assert open_study(url).study_name == "a"                                 # no name: the first
