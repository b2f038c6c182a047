"""``mpcl bench loader | step``: results go to ``runs/bench`` (or ``--out``), and the tracked
BENCHMARKS.md changes only with ``--record [FILE]``."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEP = ["bench", "step", "--device", "cpu", "--samples", "64", "--batch-size", "16", "--steps", "1", "--rounds", "2",
        "--no-kornia", "--override", "model.projector_hidden=32", "--override", "model.projector_out=16"]
STEP_MARKER = "<!-- bench:step:cpu:simclr:1:start -->"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def checkout(path: Path) -> Path:
    """A git repository holding the project's BENCHMARKS.md and .gitignore, committed: what
    ``git status`` sees of a checkout after the benchmarks ran in it."""
    path.mkdir()
    for name in ("BENCHMARKS.md", ".gitignore"):
        shutil.copy(ROOT / name, path / name)
    git(path, "init", "-q")
    git(path, "add", "BENCHMARKS.md", ".gitignore")
    git(path, "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "checkout")
    return path


def run_py(monkeypatch, *args: str) -> None:
    """``python run.py ARGS`` in the current directory, in this process (torch is imported once)."""
    from mpcl import cli

    monkeypatch.setattr(sys, "argv", [str(ROOT / "run.py"), *args])
    cli.main()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_bench_step_leaves_a_checkout_clean_until_record(tmp_path, monkeypatch):
    repo = checkout(tmp_path / "repo")
    monkeypatch.chdir(repo)
    recorded = (repo / "BENCHMARKS.md").read_bytes()
    run_py(monkeypatch, *STEP)
    step = (repo / "runs" / "bench" / "step.md").read_text()
    assert STEP_MARKER in step and "| simclr | fp32 eager |" in step
    assert "- command: `python run.py bench step --method simclr --settings fp32 --dataset cifar10" in step
    assert json.loads((repo / "runs" / "bench" / "step.json").read_text())["rows"][0]["key"] == "simclr/fp32/step"
    assert (repo / "BENCHMARKS.md").read_bytes() == recorded
    assert git(repo, "status", "--porcelain") == ""

    # --record without FILE: BENCHMARKS.md of the current directory, its own section replaced
    run_py(monkeypatch, *STEP, "--record")
    text = (repo / "BENCHMARKS.md").read_text()
    assert git(repo, "status", "--porcelain").split() == ["M", "BENCHMARKS.md"]
    assert text.count(STEP_MARKER) == 1 and "--samples 64 --steps 1 --rounds 2" in text
    old = recorded.decode()
    for marker in ("<!-- bench:loader:start -->", "<!-- bench:step:cpu:simsiam_multi,moco:2:start -->"):
        section = old[old.index(marker):old.index(marker.replace(":start", ":end"))]
        assert section in text   # the other recorded measurements are left as they were


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_bench_loader_leaves_a_checkout_clean(tmp_path, monkeypatch):
    """On a .beton of 96 images; most of the time is numba compiling FFCV's pipeline."""
    from tests.helpers.data import make_fashion_mnist
    from data_prep import prepare

    make_fashion_mnist(tmp_path / "raw", n_train=96, n_val=16)
    prepare("fashion_mnist", tmp_path / "raw", tmp_path / "betons", workers=1, quiet=True)
    repo = checkout(tmp_path / "repo")
    monkeypatch.chdir(repo)
    recorded = (repo / "BENCHMARKS.md").read_bytes()
    run_py(monkeypatch, "bench", "loader", "--data-dir", str(tmp_path / "betons"), "--samples", "64",
           "--batch-size", "32", "--workers", "1", "--device", "cpu")
    loader = (repo / "runs" / "bench" / "loader.md").read_text()
    assert "ratio FFCV / reference" in loader
    assert "- command: `python run.py bench loader --dataset fashion_mnist --workers 1 --batch-size 32" in loader
    assert json.loads((repo / "runs" / "bench" / "loader.json").read_text())["ffcv"] > 0
    assert (repo / "BENCHMARKS.md").read_bytes() == recorded
    assert git(repo, "status", "--porcelain") == ""


def test_record_file_gets_the_section_and_out_the_results(tmp_path, monkeypatch, capsys):
    from mpcl import cli

    monkeypatch.chdir(tmp_path)
    record = tmp_path / "notes" / "R.md"
    record.parent.mkdir()
    record.write_text("# My notes\n\nkept\n")
    cli.main([*STEP, "--out", "elsewhere", "--record", str(record)])
    assert f"recorded in {record}" in capsys.readouterr().out
    text = record.read_text()
    assert text.startswith("# My notes\n\nkept\n") and STEP_MARKER in text and "| simclr | fp32 eager |" in text
    section = text[text.index(STEP_MARKER):]
    assert section in (tmp_path / "elsewhere" / "step.md").read_text()
    assert "mpcl bench step --method simclr" in section
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "notes"]   # no BENCHMARKS.md, no runs/


def test_bench_subcommands_have_their_own_options(capsys):
    from mpcl import cli

    parser = cli.build_parser()
    bench = next(a for a in parser.commands["bench"]._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert sorted(bench) == ["gpu-check", "loader", "step", "sweep"]
    options = {name: {o for a in p._actions for o in a.option_strings} for name, p in bench.items()}
    assert "--epochs" in options["loader"] and "--epochs" not in options["step"]
    assert "--settings" in options["step"] and "--settings" not in options["loader"]
    assert {"--record", "--out", "--device"} <= options["gpu-check"] and "--skip" in options["gpu-check"]
    assert {"--table", "--grid", "--seeds", "--search-seeds", "--record"} <= options["sweep"]
    assert all("--out-file" not in o for o in options.values())
    args = parser.parse_args(["bench", "loader"])
    assert (args.batch_size, args.dataset, args.record, args.out) == (512, "fashion_mnist", None, "runs/bench")
    args = parser.parse_args(["bench", "step", "--record"])
    assert (args.batch_size, args.dataset, args.record) == (None, "cifar10", "BENCHMARKS.md")
    for name, p in bench.items():
        helps = [a.help or "" for a in p._actions]
        assert not any(h.startswith(("loader:", "step:")) for h in helps), name


def test_step_defaults_are_resolved_for_the_device_in_one_place():
    from mpcl.bench.options import LoaderBench, StepBench
    from mpcl.bench.step_settings import CPU_DEFAULTS

    b = StepBench(device="cpu").resolved()
    assert (b.backbone, b.batch_size, b.settings, b.steps, b.rounds, b.samples) == (
        CPU_DEFAULTS.backbone, CPU_DEFAULTS.batch_size, CPU_DEFAULTS.settings, CPU_DEFAULTS.steps,
        CPU_DEFAULTS.rounds, CPU_DEFAULTS.samples)
    assert StepBench(device="cpu", batch_size=32, samples=8).resolved().samples == 32   # at least one batch
    assert b.resolved() == b
    with pytest.raises(ValueError, match="^--rounds 1: need at least 2"):
        StepBench(device="cpu", rounds=1).resolved()
    loader = LoaderBench(device="auto", workers=10_000).resolved()
    assert loader.device in ("cpu", "cuda") and 1 <= loader.workers < 10_000
    with pytest.raises(ValueError, match="^--epochs 1"):
        LoaderBench(epochs=1).resolved()


def test_bench_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from mpcl import cli

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "loader", "--dataset", "mnist"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: --dataset mnist: unknown; known: cifar10")
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "gpu-check", "--device", "cpu", "--data", str(tmp_path / "none")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --data {tmp_path / 'none'}: the four Fashion-MNIST idx files") and "\n" not in err
    assert list(tmp_path.iterdir()) == []
