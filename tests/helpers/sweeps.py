"""A tiny sweep file (3 trials of the tiny run, one diverging) and the environment of the
subprocesses that run sweeps."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tests.helpers.runs import tiny_sweep_overrides

ROOT = Path(__file__).resolve().parents[2]   # the checkout: run.py and configs/ are read from it


def sweep_file(tmp_path, fmnist_path, **extra) -> Path:
    tree = {
        "name": "tiny", "base": str(ROOT / "configs/fmnist_simclr_attn.yaml"),
        "overrides": tiny_sweep_overrides(fmnist_path, subset=256, epochs=2),
        "space": {"method.temperature": {"type": "loguniform", "low": 0.1, "high": 1.0},
                  "optim.lr": {"type": "choice", "values": [0.3, 1.0e30]}},
        "points": [{"method.temperature": 0.5, "optim.lr": 0.3},
                   {"method.temperature": 0.3, "optim.lr": 1.0e30},     # diverges at once
                   {"method.temperature": 0.2, "optim.lr": 0.3}],
        "objective": {"metric": "val/knn_top1", "mode": "max"},
        "num_samples": 3, "max_concurrent": 2, "scheduler": {"type": "none"},
        "resources": {"workers": 1, "cpus_per_worker": 1, "use_gpu": "false"},
        "sampler": {"type": "tpe", "seed": 0}, "out": str(tmp_path / "sweep"),
    }
    tree.update(extra)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def sweep_env() -> dict[str, str]:
    """This environment, unbuffered, without RAY_ADDRESS (a sweep starts its own local Ray)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def assert_refused_before_ray(tree: dict, tmp_path: Path, capsys, named: str) -> None:
    """``run.py sweep`` on the sweep file ``tree`` exits 2 with one line naming ``named`` and the
    file, before Ray starts and before the sweep directory exists."""
    import pytest
    import ray

    from mpcl import cli

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and str(path) in err, err
    assert not ray.is_initialized() and not (tmp_path / "sweep").exists()
