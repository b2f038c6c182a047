"""sweeps/cluster/slurm.sbatch on this machine with a faked SLURM: a two-entry node list of
localhost, ``srun`` and ``scontrol`` as shims on PATH. The script starts a Ray head and a second
raylet (each ``ray start --block``, token authentication on), runs a two-trial sweep with
--address; a SIGTERM (what scancel and the time limit send the batch script) stops the sweep
and Ray; a second submission with --resume finishes the sweep from the checkpoints."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.ranks import unassigned_port
from tests.helpers.sweeps import ROOT, sweep_env, sweep_file

SCRIPT = ROOT / "sweeps" / "cluster" / "slurm.sbatch"

SRUN = """#!/bin/bash
# srun shim: every step runs here, in the foreground of this process (options are ignored)
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
exec "$@"
"""
SCONTROL = """#!/bin/bash
# scontrol shim: only `scontrol show hostnames LIST` (comma-separated here)
[ "$1 $2" = "show hostnames" ] || { echo "scontrol shim: $*: not faked" >&2; exit 1; }
tr ',' '\\n' <<< "$3"
"""


def _slurm_env(tmp_path: Path) -> dict:
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    return dict(
        sweep_env(), PATH=f"{shims}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="2",
        SLURM_JOB_NODELIST="localhost,localhost", SLURM_SUBMIT_DIR=str(ROOT),
        MPCL_PYTHON=sys.executable, MPCL_RAY_PORT=str(unassigned_port()), MPCL_RAY_WAIT_S="180",
        MPCL_RAY_HEAD_ARGS=(f"--num-cpus=1 --resources={{\"head_node\":1}} --include-dashboard=false "
                            f"--temp-dir={tempfile.mkdtemp(prefix='ray-slurm-')} {_agent_ports()}"),
        MPCL_RAY_WORKER_ARGS=f"--num-cpus=1 --resources={{\"second_node\":1}} {_agent_ports()}",
        RAY_agent_register_timeout_ms="120000")


def _agent_ports() -> str:
    """Fixed ports for a node's agents: a raylet left to discover them gives up after 15 s,
    which a busy 2-core test machine exceeds (then the raylet aborts and the node is lost)."""
    return " ".join(f"--{name}={unassigned_port()}" for name in (
        "dashboard-agent-grpc-port", "dashboard-agent-listen-port", "runtime-env-agent-port",
        "metrics-export-port"))


def _submit(args: list[str], env: dict, log: Path, interrupt_when=None, timeout: float = 600):
    """Run the script as sbatch would; SIGTERM it (only the batch shell, as --signal=B:TERM
    does) once ``interrupt_when()`` holds. Returns (exit code, output, every process the job
    started, seen while it ran)."""
    import psutil

    with open(log, "w") as out:
        job = subprocess.Popen(["bash", str(SCRIPT), *args], cwd=tempfile.gettempdir(), env=env,
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    seen: dict[int, tuple] = {}      # pid -> (process, its command line)
    # Ray's node processes all name the job's Ray temp dir; a raylet that `ray start` leaves
    # behind is re-parented at once, so it can be gone from the job's tree before a poll
    temp_dir = re.search(r"--temp-dir=(\S+)", env["MPCL_RAY_HEAD_ARGS"]).group(1)
    deadline = time.time() + timeout
    try:
        while job.poll() is None and time.time() < deadline:
            try:
                for p in psutil.Process(job.pid).children(recursive=True):
                    if p.pid not in seen:
                        seen[p.pid] = (p, " ".join(p.cmdline()))
            except psutil.Error:
                pass
            for p in psutil.process_iter():
                try:
                    if p.pid not in seen and temp_dir in (cmd := " ".join(p.cmdline())):
                        seen[p.pid] = (p, cmd)
                except psutil.Error:
                    pass
            if interrupt_when is not None and interrupt_when():
                job.send_signal(signal.SIGTERM)
                interrupt_when = None
            time.sleep(0.5)
        job.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        if job.poll() is None:
            job.kill()
    return job.returncode, log.read_text(), list(seen.values())


def _raylets(processes) -> int:
    """How many raylets the job started: distinct raylet command lines (each names its own node
    id), since a raylet's child caught between fork and exec still shows the raylet's."""
    return len({cmd for _, cmd in processes if cmd.split(" ")[0].endswith("/raylet")})


def _left_running(processes, grace: float = 20.0) -> list[str]:
    """The job's processes still alive ``grace`` seconds after it ended; killed here (they are
    ours). The grace covers a worker that Ray was still starting when the job stopped: it exits
    once it finds its raylet gone, which can take seconds on a loaded machine."""
    import psutil

    def alive(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.time() + grace
    while any(alive(p) for p, _ in processes) and time.time() < deadline:
        time.sleep(0.5)
    names = []
    for p, cmd in processes:
        if alive(p):
            names.append(f"{p.pid} {cmd[:120]}")
            try:
                p.kill()
            except psutil.Error:
                pass
    return names


@pytest.mark.ray
@pytest.mark.slow
def test_slurm_script_sweeps_stops_on_sigterm_and_resumes(tmp_path, fmnist_path):
    env = _slurm_env(tmp_path)
    sweep_dir = tmp_path / "sweep"
    path = sweep_file(tmp_path, fmnist_path, num_samples=2, points=[
        {"method.temperature": 0.5, "optim.lr": 0.3}, {"method.temperature": 0.2, "optim.lr": 0.3}])
    tree = path.read_text().replace("train.epochs: 2", "train.epochs: 3")
    path.write_text(tree)

    def one_epoch_done() -> bool:
        return any(p.read_text().strip() for p in sweep_dir.glob("trials/*/metrics.jsonl"))

    started = []      # every process either submission started: none may outlive the test
    try:
        rc, out, processes = _submit([str(path), "--out", str(sweep_dir)], env, tmp_path / "first.log",
                                     interrupt_when=one_epoch_done)
        started += processes
        assert rc == 143, out[-4000:]
        assert "slurm.sbatch: 2 Ray nodes up" in out and "second_node" in out, out[-4000:]
        assert "SIGTERM: stopping the sweep" in out, out[-4000:]
        assert _raylets(processes) == 2, processes  # two nodes
        assert _left_running(processes) == []                  # Ray and the driver are gone
        first = {p.parent.name: p.read_text().splitlines()[0]
                 for p in sweep_dir.glob("trials/*/metrics.jsonl") if p.read_text().strip()}
        assert first, "no trial had finished an epoch"

        rc, out, processes = _submit([str(path), "--out", str(sweep_dir), "--resume"], env,
                                     tmp_path / "second.log")
        started += processes
        assert rc == 0, out[-4000:]
        assert _raylets(processes) == 2, processes
        assert _left_running(processes) == []
        summary = json.loads((sweep_dir / "results.json").read_text())
        assert sorted(t["state"] for t in summary["trials"]) == ["complete", "complete"], summary
        for trial, line in first.items():        # continued from its checkpoint, not started over
            lines = (sweep_dir / "trials" / trial / "metrics.jsonl").read_text().splitlines()
            assert lines[0] == line and [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]
    finally:
        _left_running(started)
