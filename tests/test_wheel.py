"""mpcl as an installed package, away from any checkout: the wheel built from this tree,
installed (not editable) into a fresh virtual environment in a temporary folder, gives an
``mpcl`` command that names its presets without a path, and ``python -m data_prep``.

The wheel is built from a copy of the tracked tree (a stale ``build/`` folder in a checkout
would otherwise leak removed modules into it). The fresh environment installs the wheel with
``--no-deps`` and sees the test environment's third-party packages through a ``.pth`` line:
the machine has no network beyond the package registries, and installing torch again would
take minutes. That line adds a folder to ``sys.path`` without running the ``.pth`` files in
it, so the editable mpcl of the test environment stays out of sight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the checkout's own folders that are not source (at the top only: mpcl/data is source)
LEFT_OUT = {".git", ".venv", "runs", "data", "build", "dist", "site", "mutants", "wandb", ".pytest_cache",
            ".ruff_cache", ".import_linter_cache", ".grimp_cache"}


def _run(argv: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(the environment's bin folder, an empty working folder, the environment variables)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    def left_out(folder: str, names: list[str]) -> set[str]:
        top = LEFT_OUT if Path(folder) == ROOT else set()
        return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(ROOT, src, symlinks=True, ignore=left_out)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAY_ADDRESS")}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
          str(src)], tmp, env)
    wheel = next((tmp / "dist").glob("mpcl-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp, env)
    site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp, env).stdout.strip())
    (site / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp, env)
    work = tmp / "work"
    work.mkdir()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv / "bin", work, env


@pytest.mark.slow
def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    bin_dir, work, env = installed
    where = _run([str(bin_dir / "python"), "-c", "import mpcl, data_prep; print(mpcl.__file__); "
                  "print(data_prep.__file__)"], work, env).stdout.split()
    venv = bin_dir.parent
    assert all(Path(w).is_relative_to(venv) for w in where), where
    assert not any(Path(w).is_relative_to(ROOT) for w in where), where


@pytest.mark.slow
def test_every_command_answers_help(installed):
    bin_dir, work, env = installed
    top = _run([str(bin_dir / "mpcl"), "--help"], work, env).stdout
    for command in ("train", "eval", "sweep", "report", "bench", "dynamics", "reproduce", "demo"):
        assert command in top
    assert top.startswith("usage: mpcl ")
    assert "--resume" in _run([str(bin_dir / "mpcl"), "sweep", "--help"], work, env).stdout
    assert "--src" in _run([str(bin_dir / "python"), "-m", "data_prep", "--help"], work, env).stdout
    assert list(work.iterdir()) == []                       # --help writes nothing


@pytest.mark.slow
@pytest.mark.parametrize("ray", [False, True], ids=["no-ray", "ray"])
def test_one_epoch_by_preset_name(installed, fmnist_path, ray):
    """``mpcl train --config fmnist_simclr --config parts/budget/tiny``: the preset and the part
    shipped in the wheel, data read from the raw files, the run written under the working
    folder (through Ray: the workers import the installed mpcl too)."""
    bin_dir, work, env = installed
    out = f"runs/{'ray' if ray else 'local'}"
    argv = [str(bin_dir / "mpcl"), "train", "--config", "fmnist_simclr", "--config", "parts/budget/tiny",
            *([] if ray else ["--no-ray"]), f"data.path={fmnist_path}", "tracking.wandb=disabled", f"out={out}"]
    if ray:
        argv += ["scale.cpus_per_worker=1"]
    proc = _run(argv, work, env)
    metrics = [json.loads(line) for line in (work / out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0] and metrics[0]["val/knn_top1"] > 10   # above chance
    assert (work / out / "checkpoints" / "last.pt").is_file() or any((work / out).glob("checkpoint_*"))
    assert f"run directory: {work / out}" in proc.stdout
    assert "method:\n  name: simclr" in (work / out / "config.yaml").read_text()


def test_no_module_looks_for_the_repository_root():
    """The package finds its files through itself (``importlib.resources``), never through
    ``__file__`` walking up to a checkout that an installed mpcl does not have."""
    looking = [f"{path.relative_to(ROOT)}:{n}" for package in ("mpcl", "data_prep")
               for path in sorted((ROOT / package).rglob("*.py"))
               for n, line in enumerate(path.read_text().splitlines(), 1)
               if "__file__" in line]
    assert looking == []
