"""The README's commands, as written, from the repository root: the ```bash blocks are read from
README.md, each command is run in a copy of the repository (so that its relative paths, the
presets' data/fmnist and runs/..., land in the copy, not in the real checkout), shortened only
by ``key=value`` overrides appended at the end. The Ray commands run in worker processes
whose working directory is not the repository: relative paths (``--config``, ``data.path``,
``out``) must have been resolved by the driver.

The training commands read the raw Fashion-MNIST files through a relative ``data.path``
(``data.loader=torch``: no FFCV compilation in every process, which would take minutes on two
cores); FFCV's loader and the .beton files written on a fresh checkout are tested in
test_ffcv_loader.py and test_launch.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("run.py", "mpcl", "data_prep", "configs", "sweeps", "README.md", "pyproject.toml")
RAW = "data/raw/fashion-mnist"   # in the copy: a link to the raw files, read through a relative path
SMALL = ["data.loader=torch", f"data.path={RAW}", "data.subset=512", "data.val_subset=512", "data.batch_size=128",
         "train.progress=false"]


def readme_commands() -> list[str]:
    """Every command of the README's bash blocks, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def readme_command(prefix: str) -> list[str]:
    """The one README command starting with ``prefix``, as argv."""
    found = [c for c in readme_commands() if c.startswith(prefix)]
    assert len(found) == 1, f"README: {len(found)} commands start with {prefix!r}: {found}"
    return shlex.split(found[0])


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fmnist_path) -> Path:
    """A copy of the repository without data/ or runs/, as on a fresh checkout."""
    copy = tmp_path_factory.mktemp("checkout")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, copy / name)
    (copy / RAW).parent.mkdir(parents=True)
    (copy / RAW).symlink_to(fmnist_path)
    return copy


def run_as_written(repo: Path, argv: list[str], *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    assert argv[0] == "python"
    env = dict(os.environ, PYTHONPATH=str(repo), PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, *argv[1:], *overrides], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n"
                                  f"{proc.stderr[-3000:]}")
    return proc


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_without_ray(repo):
    argv = readme_command("python run.py train --config configs/fmnist_simclr_attn.yaml --no-ray")
    assert "out=runs/r" in argv
    run_as_written(repo, argv, *SMALL)
    assert [r["epoch"] for r in _metrics(repo / "runs/r")] == [0]
    assert (repo / "runs/r/checkpoints/last.pt").is_file()


@pytest.mark.slow
def test_eval_of_the_trained_checkpoint(repo):
    proc = run_as_written(repo, readme_command("python run.py eval --checkpoint runs/r/checkpoints/last.pt"),
                          "data.val_subset=512")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["epoch"] == 0 and 0 <= result["knn_top1"] <= 100


@pytest.mark.slow
def test_data_prep_fashion_mnist(repo, fmnist_path):
    argv = readme_command("python -m data_prep fashion_mnist")
    assert argv[argv.index("--src") + 1] == fmnist_path
    run_as_written(repo, argv)
    manifest = json.loads((repo / "data/fmnist/manifest.json").read_text())
    assert manifest["sizes"] == {"train": 60000, "val": 10000}


@pytest.mark.slow
@pytest.mark.ray
def test_train_through_ray_with_two_workers(repo):
    argv = readme_command("python run.py train --config configs/fmnist_simclr_attn.yaml scale.workers=2")
    proc = run_as_written(repo, argv, "train.epochs=1", "model.backbone=small_cnn", *SMALL, "out=runs/r_ray")
    assert [r["epoch"] for r in _metrics(repo / "runs/r_ray")] == [0]
    assert list((repo / "runs/r_ray").glob("checkpoint_*"))
    assert not (repo / "runs/r_ray/FAILED.json").exists()
    # what --no-ray shows: the epoch's line; Ray's own lines are in the run's logs/, one file a worker
    assert re.search(r"^epoch 0  train/loss=\S+  val/knn_top1=", proc.stdout, re.M), proc.stdout
    assert "RayTrainWorker" not in proc.stdout + proc.stderr and "\x1b[" not in proc.stdout + proc.stderr
    for rank in (0, 1):
        assert "Reporting training result" in (repo / f"runs/r_ray/logs/worker-{rank}.log").read_text()


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_then_report(repo):
    run_as_written(repo, readme_command("python run.py sweep sweeps/fmnist_demo.yaml"),
                   "num_samples=1", "train.epochs=1", *SMALL)
    sweep_dir = repo / "runs/sweeps/fmnist_demo"
    results = json.loads((sweep_dir / "results.json").read_text())
    assert [t["state"] for t in results["trials"]] == ["complete"]
    proc = run_as_written(repo, readme_command("python run.py report runs/sweeps/fmnist_demo"))
    assert (sweep_dir / "report/index.html").is_file() and "report:" in proc.stdout


def _merged(repo: Path, argv: list[str], env: dict | None = None) -> tuple[int, list[str]]:
    """Run ``argv`` (python ...) in the copy, stdout and stderr into one pipe (not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", **(env or {})}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=repo, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    return proc.returncode, proc.stdout.splitlines()


@pytest.mark.slow
@pytest.mark.ray
def test_the_demo_prints_a_short_plain_account_with_its_summary_last(repo):
    """``run.py demo``, two trials of one epoch, the one at attention weight 1 made to crash
    (tests/faults): at most 60 plain lines, no Ray worker line, the crash in one line naming
    the log that holds its traceback, and the summary last."""
    faults = ROOT / "tests" / "faults"
    rc, lines = _merged(repo, ["python", "run.py", "demo", "--out", "runs/demo_small", "num_samples=2",
                               "train.epochs=1", "data.subset=1024", "data.val_subset=512"],
                        {"PYTHONPATH": f"{faults}{os.pathsep}{repo}", "MPCL_TEST_FAULT": "crash_full_attention"})
    text = "\n".join(lines)
    assert rc == 0, text[-3000:]
    assert len(lines) <= 60, text
    assert "\x1b[" not in text
    for ray_line in ("RayTrainWorker", "TrainController", "(raylet)", "Trial status", "tensorboard"):
        assert ray_line not in text, ray_line
    (failed,) = [line for line in lines if " failed: " in line and line.startswith("trial ")]
    log = Path(re.fullmatch(r"trial \w+ failed: .*injected crash for the test.* \(log: (\S+)\)", failed)[1])
    assert "Traceback (most recent call last)" in log.read_text() and "injected crash" in log.read_text()
    assert lines[-1].startswith("demo: done in ") and lines[-2].startswith("report: ")
    assert [line.split(":")[0] for line in lines[-5:-2]] == ["sweep directory", "optuna study", "report"]


@pytest.mark.slow
@pytest.mark.ray
def test_verbose_brings_ray_s_worker_lines_back(repo):
    argv = readme_command("python run.py train --config configs/fmnist_simclr_attn.yaml scale.workers=2")
    rc, lines = _merged(repo, [*argv, "--verbose", "train.epochs=1", "model.backbone=small_cnn", *SMALL,
                               "out=runs/r_verbose"])
    text = "\n".join(lines)
    assert rc == 0, text[-3000:]
    assert "(RayTrainWorker pid=" in text and "Reporting training result" in text
    assert not list((repo / "runs/r_verbose").glob("logs/worker-*.log"))
