"""A two-node Ray cluster on this machine (`ray start --head` plus a second `ray start
--address` with its own resources) runs a 2-trial sweep submitted with --address."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.sweeps import ROOT, sweep_env, sweep_file


def _ray(*args: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _stop_ray_started_in(temp_dir: str, address: str | None) -> None:
    """Stop the Ray processes of this cluster only (``ray stop`` would stop every Ray on the
    machine): those whose command line names its temp dir or its address (GCS, raylets,
    monitors, the client server) and everything they started (agents, workers)."""
    ours: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if p.pid != os.getpid() and (temp_dir in cmdline or (address and address in cmdline)):
            for q in (p, *p.children(recursive=True)):
                ours[q.pid] = q
    for p in ours.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(ours.values()), timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.ray
@pytest.mark.slow
def test_two_node_cluster_runs_a_sweep_submitted_with_address(tmp_path, fmnist_path):
    # token authentication stays on: every node and the client share one token, as on a real cluster
    env = dict(sweep_env(), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    temp_dir = tempfile.mkdtemp(prefix="ray-head-")
    # --port=0: the GCS binds a free port itself; Ray writes the address into the temp dir
    head = _ray("start", "--head", "--port=0", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                "--resources={\"head_node\": 1}", "--include-dashboard=false", f"--temp-dir={temp_dir}", env=env)
    gcs = None
    try:
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        gcs = (Path(temp_dir) / "ray_current_cluster").read_text().strip()   # host:port as Ray wrote it
        address = f"127.0.0.1:{gcs.rsplit(':', 1)[1]}"
        worker = _ray("start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                      "--resources={\"second_node\": 1}", env=env)
        assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
        for _ in range(30):  # the second raylet takes a few seconds to register
            status = _ray("status", f"--address={address}", env=env)
            if "second_node" in status.stdout:
                break
            time.sleep(2)
        assert "second_node" in status.stdout and "head_node" in status.stdout, status.stdout + status.stderr

        path = sweep_file(tmp_path, fmnist_path, num_samples=2, points=[
            {"method.temperature": 0.5, "optim.lr": 0.3}, {"method.temperature": 0.2, "optim.lr": 0.3}])
        run = subprocess.run([sys.executable, "run.py", "sweep", str(path), "--address", address], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        summary = json.loads((tmp_path / "sweep" / "results.json").read_text())
        assert sorted(t["state"] for t in summary["trials"]) == ["complete", "complete"]
    finally:
        _stop_ray_started_in(temp_dir, gcs)
