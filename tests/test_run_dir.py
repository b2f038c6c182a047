"""The run directory: ``train.resume=false`` starts over in a clean directory (the old run
moved aside, nothing lost), and a run that cannot be resumed (another backbone, an empty or
torn checkpoint) is one line, exit 2, with nothing in the directory rewritten."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mpcl import cli
from tests.helpers.runs import tiny_overrides


def _overrides(out, fmnist_path, **extra) -> list[str]:
    return tiny_overrides(out, "simclr", **{"data.path": fmnist_path, "data.subset": 128, "data.val_subset": 128,
                                            "data.batch_size": 64, "tracking.wandb": "disabled", **extra})


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _files(run_dir: Path) -> dict[str, bytes]:
    """What a run wrote (the lock file is the writer's, not the run's: it stays where it is)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, fmnist_path) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    cli.main(["train", "--no-ray", *_overrides(out, fmnist_path, **{"train.epochs": 2})])
    assert _epochs(out) == [0, 1]
    return out


@pytest.fixture
def finished_run(trained_once, tmp_path) -> Path:
    """A copy of a finished 2-epoch --no-ray run (trained once per module)."""
    return Path(shutil.copytree(trained_once, tmp_path / "run"))


def test_resume_false_starts_over_and_moves_the_old_run_aside(finished_run, fmnist_path, capsys):
    before = _files(finished_run)
    cli.main(["train", "--no-ray", *_overrides(finished_run, fmnist_path, **{"train.epochs": 1,
                                                                             "train.resume": False})])
    assert _epochs(finished_run) == [0]                         # a clean log, not [0, 1, 0]
    aside = sorted(finished_run.parent.glob("run.old-*"))
    assert len(aside) == 1 and _files(aside[0]) == before       # the old run, byte for byte
    assert str(aside[0]) in capsys.readouterr().err


def test_resuming_with_another_backbone_is_one_line_and_rewrites_nothing(finished_run, fmnist_path, capsys):
    before = _files(finished_run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--no-ray", *_overrides(finished_run, fmnist_path, **{
            "train.epochs": 3, "model.backbone": "resnet18"})])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.backbone: 'small_cnn' -> 'resnet18'" in err[0], err
    assert "train.resume=false" in err[0]
    assert _files(finished_run) == before                       # config.yaml and the log untouched


@pytest.mark.parametrize("content", [b"", b"torn"])
def test_an_empty_or_torn_last_checkpoint_is_one_line(content, tmp_path, fmnist_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(content)
    for argv in (["train", "--no-ray", *_overrides(out, fmnist_path)],
                 ["eval", "--checkpoint", str(out / "checkpoints" / "last.pt")]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "last.pt: not a readable mpcl checkpoint" in err[0], err
    assert sorted(os.listdir(out)) == [".lock", "checkpoints"]  # nothing but the writer's lock beside it


def test_resume_false_in_an_empty_or_missing_directory_moves_nothing(tmp_path):
    from mpcl.engine.local import start_over

    assert start_over(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert start_over(tmp_path / "empty") is None and (tmp_path / "empty").is_dir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "metrics.jsonl").write_text("{}\n")
    first = start_over(tmp_path / "full")
    assert list((tmp_path / "full").iterdir()) == []             # the directory stays, emptied
    (tmp_path / "full" / "metrics.jsonl").write_text("{}\n")
    second = start_over(tmp_path / "full")                      # within the same second: a new name
    assert first != second and (first / "metrics.jsonl").is_file() and (second / "metrics.jsonl").is_file()


@pytest.mark.ray
def test_resume_false_through_ray_starts_over(tmp_path, fmnist_path, capsys):
    """The Ray path: rerunning a finished run with train.resume=false gives a clean log and
    Ray Train checkpoints of the new run only; the old run is moved aside whole."""
    pytest.importorskip("ray")
    import ray

    from mpcl.config.compose import load
    from mpcl.launch.cluster import init_ray
    from mpcl.launch.train import train

    out = tmp_path / "run"
    try:
        init_ray(num_cpus=2)
        cfg = load(None, _overrides(out, fmnist_path, **{"train.epochs": 2, "scale.use_gpu": "false"}))
        train(cfg)
        assert _epochs(out) == [0, 1]
        before = _files(out)
        again = load(None, _overrides(out, fmnist_path, **{"train.epochs": 1, "scale.use_gpu": "false",
                                                            "train.resume": False}))
        train(again)
    finally:
        ray.shutdown()
    assert _epochs(out) == [0]
    assert len(list(out.glob("checkpoint_*/state.pt"))) == 1
    aside = sorted(tmp_path.glob("run.old-*"))
    assert len(aside) == 1 and _files(aside[0]) == before


def test_run_record_pushes_every_file_it_writes_and_drops_replayed_epochs(tmp_path, capsys):
    """The record both reporters keep: each write is followed by ``push`` of that file (a URI
    run directory copies it there); resuming after epoch 0 drops the log lines of later epochs."""
    from mpcl.config.compose import load
    from mpcl.tracking import RunRecord

    cfg = load(None, [f"out={tmp_path}", "tracking.wandb=disabled"])
    pushed: list[str] = []
    record = RunRecord(cfg, tmp_path, push=pushed.append)
    record.start(None)
    assert sorted(pushed) == ["config.yaml", "metrics.jsonl"] and (tmp_path / "config.yaml").is_file()
    for epoch in (0, 1):
        record.append({"epoch": epoch, "train/loss": 1.0})
    assert pushed[2:] == ["metrics.jsonl", "metrics.jsonl"] and _epochs(tmp_path) == [0, 1]
    record.close()
    pushed.clear()
    RunRecord(cfg, tmp_path, push=pushed.append).start({"epoch": 0})
    assert _epochs(tmp_path) == [0] and "metrics.jsonl" in pushed
    assert f"resuming {tmp_path} after epoch 0" in capsys.readouterr().err
