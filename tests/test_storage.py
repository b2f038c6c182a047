"""Run and sweep directories on S3: a real S3 API (moto's server on 127.0.0.1) as the
endpoint. A two-worker run and a two-trial sweep write there, are killed (SIGKILL of the
driver), resume from there; report and eval read from there."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.helpers.runs import tiny_overrides
from tests.helpers.sweeps import ROOT, sweep_env, sweep_file

BUCKET = "mpcl"


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """A moto S3 server with one bucket, serving from a thread of this process on a port it
    bound itself (port 0); the environment that points boto3 and pyarrow at it (this process
    and the subprocesses, hence Ray's workers)."""
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto's backends are global to the process: start from an empty S3
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "MPCL_CACHE": str(tmp_path / "cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield dict(sweep_env(), **env)
    finally:
        server.stop()


def _keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _text(key: str) -> str:
    import boto3

    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def test_mirror_and_fetch(s3, tmp_path):
    from mpcl.launch.storage import Mirror, fetch, fetch_for_report, kind, read_text

    uri = f"s3://{BUCKET}/sweeps/x"
    files = Mirror(uri)
    assert files.remote and str(files.local).startswith(str(tmp_path / "cache"))
    files.local.mkdir(parents=True)
    (files.local / "results.json").write_text(json.dumps(
        {"trials": [{"trial_id": "t1", "run_dir": f"{uri}/trials/t1"}]}))
    files.push("results.json")
    assert json.loads(_text("sweeps/x/results.json"))["trials"][0]["trial_id"] == "t1"
    assert kind(uri) == "dir" and kind(f"{uri}/results.json") == "file" and kind(f"{uri}/no") == "missing"
    assert read_text(f"{uri}/nothing.json") is None

    other = Mirror(uri, local=tmp_path / "elsewhere")        # another node: nothing there yet
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "metrics.jsonl").write_text("stale\n")
    assert not other.pull("metrics.jsonl") and not (tmp_path / "elsewhere" / "metrics.jsonl").exists()
    assert other.pull("results.json")
    other.remove("results.json")
    assert [k for k in _keys("sweeps/x/") if not k.endswith("/")] == []   # pyarrow keeps a marker

    import boto3

    client = boto3.client("s3")
    for key in ("trials/t1/metrics.jsonl", "trials/t1/checkpoint_000000/state.pt", "tune/state.json",
                "results.json"):
        client.put_object(Bucket=BUCKET, Key=f"sweeps/x/{key}", Body=b"{}" if key.endswith("json") else b"x")
    client.put_object(Bucket=BUCKET, Key="sweeps/x/results.json", Body=json.dumps(
        {"trials": [{"trial_id": "t1", "run_dir": f"{uri}/trials/t1"}]}).encode())
    local = fetch_for_report(uri)
    got = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert got == ["results.json", "trials/t1/metrics.jsonl"]           # no checkpoints, no tune/
    assert json.loads((local / "results.json").read_text())["trials"][0]["run_dir"] == str(local / "trials/t1")
    one = fetch(f"{uri}/trials/t1/checkpoint_000000/state.pt")
    assert one.name == "state.pt" and one.read_bytes() == b"x"
    with pytest.raises(FileNotFoundError, match="no such file"):
        fetch(f"{uri}/missing")


def _run_until(cmd: list[str], env: dict, log, until, timeout: float = 600) -> None:
    """Run ``cmd`` until ``until()`` holds, then SIGKILL it and every process it started."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    seen = {}
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline and not until():
            try:
                seen.update({p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)})
            except psutil.Error:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, "finished before it could be killed"
    finally:
        for p in [psutil.Process(proc.pid), *seen.values()]:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        proc.wait(timeout=60)


def _run(cmd: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.ray
@pytest.mark.slow
def test_two_worker_run_on_s3_resumes_after_kill(s3, tmp_path, fmnist_path):
    out = f"s3://{BUCKET}/runs/r1"
    cmd = [sys.executable, "run.py", "train", "--config", str(ROOT / "configs/fmnist_simclr.yaml"),
           *tiny_overrides(out, "simclr", **{
               "data.path": fmnist_path, "data.subset": 256, "data.batch_size": 64, "train.epochs": 4,
               "scale.workers": 2, "scale.num_to_keep": 4, "tracking.wandb": "disabled"})]

    def two_epochs() -> bool:
        """Two epochs logged, and Ray Train's controller has registered a checkpoint (it polls
        the workers, so it writes its snapshot seconds after a worker uploaded one; a run
        killed before that would rightly start over)."""
        keys = _keys("runs/r1/")
        if "runs/r1/metrics.jsonl" not in keys or "runs/r1/checkpoint_manager_snapshot.json" not in keys:
            return False
        snapshot = json.loads(_text("runs/r1/checkpoint_manager_snapshot.json"))
        return bool(snapshot.get("latest_checkpoint_result")) and len(_text("runs/r1/metrics.jsonl").splitlines()) >= 2

    with open(tmp_path / "first.log", "w") as log:
        _run_until(cmd, s3, log, two_epochs)
    first = _text("runs/r1/metrics.jsonl").splitlines()
    assert any(k.startswith("runs/r1/checkpoint_") for k in _keys("runs/r1/"))
    assert not (tmp_path / "runs").exists()                   # nothing local beside the cache

    other_node = dict(s3, MPCL_CACHE=str(tmp_path / "other-node"))   # nothing local to start from
    done = _run(cmd, other_node)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = _text("runs/r1/metrics.jsonl").splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2, 3] and lines[0] == first[0]
    # what this run trained, printed as --no-ray prints it, read from the store as it came
    printed = [int(m[1]) for m in re.finditer(r"^epoch (\d+)  train/loss=", done.stdout, re.M)]
    assert printed and printed == list(range(printed[0], 4)) and printed[0] <= 2, done.stdout
    keys = _keys("runs/r1/")
    assert "runs/r1/config.yaml" in keys and "runs/r1/FAILED.json" not in keys
    assert "runs/r1/embedding.npz" in keys                    # rank 0's sample of the features, pushed
    last = sorted(k for k in keys if k.endswith("/state.pt"))[-1]

    ev = _run([sys.executable, "run.py", "eval", "--checkpoint", f"s3://{BUCKET}/{last}",
               "--linear-epochs", "2", f"data.path={fmnist_path}"], s3)
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads(ev.stdout)
    assert result["epoch"] == 3 and 0 <= result["knn_top1"] <= 100 and result["checkpoint"].startswith("s3://")
    report = _run([sys.executable, "run.py", "report", out], s3)
    assert report.returncode == 0, report.stderr[-3000:]
    page = open(report.stdout.split("report: ")[-1].strip()).read()
    assert "Run" in page and "validation features, epoch 3" in page   # the map of the pushed embedding.npz


@pytest.mark.ray
@pytest.mark.slow
def test_two_trial_sweep_on_s3_resumes_after_kill(s3, tmp_path, fmnist_path):
    out = f"s3://{BUCKET}/sweeps/s1"
    path = sweep_file(tmp_path, fmnist_path, num_samples=2, out=out, points=[
        {"method.temperature": 0.5, "optim.lr": 0.3}, {"method.temperature": 0.2, "optim.lr": 0.3}])
    cmd = [sys.executable, "run.py", "sweep", str(path)]

    def one_epoch() -> bool:
        logs = [k for k in _keys("sweeps/s1/trials/") if k.endswith("/metrics.jsonl")]
        return any(_text(k).strip() for k in logs)

    with open(tmp_path / "first.log", "w") as log:
        _run_until(cmd, s3, log, one_epoch)
    assert "sweeps/s1/sweep.yaml" in _keys("sweeps/s1/")
    rerun = _run(cmd, s3, timeout=120)                        # without --resume: refused
    assert rerun.returncode == 2 and "add --resume" in rerun.stderr

    done = _run([*cmd, "--resume"], s3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(_text("sweeps/s1/results.json"))
    assert sorted(t["state"] for t in summary["trials"]) == ["complete", "complete"], summary
    assert all(t["run_dir"].startswith(out + "/trials/") for t in summary["trials"])
    assert summary["storage"].startswith("sqlite:///" + str(tmp_path / "cache"))
    assert "sweeps/s1/optuna.db" in _keys("sweeps/s1/")
    for t in summary["trials"]:
        rows = _text(f"sweeps/s1/trials/{t['trial_id']}/metrics.jsonl").splitlines()
        assert [json.loads(x)["epoch"] for x in rows] == [0, 1]

    report = _run([sys.executable, "run.py", "report", out], s3)
    assert report.returncode == 0, report.stderr[-3000:]
    page = open(report.stdout.split("report: ")[-1].strip()).read()
    assert all(t["trial_id"] in page for t in summary["trials"])


def test_study_goes_to_the_storage_url_given(tmp_path, fmnist_path):
    """--storage: the Optuna study is created in that database, not beside the results."""
    import optuna

    from mpcl.launch.search import make_searcher
    from mpcl.launch.sweep_spec import load_sweep

    spec = load_sweep(sweep_file(tmp_path, fmnist_path))
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    make_searcher(spec, tmp_path / "sweep", epochs=2, study=url)
    assert (tmp_path / "elsewhere.db").is_file() and not (tmp_path / "sweep" / "optuna.db").exists()
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == [spec.name]


def test_no_ray_with_a_uri_out_is_one_line():
    proc = _run([sys.executable, "run.py", "train", "--config", str(ROOT / "configs/fmnist_simclr.yaml"),
                 "--no-ray", "out=s3://bucket/run"], sweep_env(), timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("error: out=s3://bucket/run: --no-ray writes a local run directory; "
                           "a URI needs Ray (drop --no-ray)\n")
