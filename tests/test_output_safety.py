"""Nothing written is lost when two writers collide or the disk fills.

One writer per output directory (``mpcl.files.exclusive``): a second one is refused at once,
naming the first; a dead writer's lock never blocks. A write the storage refuses (a full
disk) is one line naming the file and the cause, and leaves the earlier file whole: a
checkpoint, ``metrics.jsonl`` without a torn line, a report page, the Optuna study. The full
disks are real ones, small tmpfs mounts (root only: elsewhere those tests are skipped).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mpcl.files import LOCK_FILE, OutputBusy, OutputError, WriteFailed, exclusive, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]

# a process that takes the lock of argv[1], says so, then forks a child that outlives nothing
# but itself, and sleeps (killed by the test)
HOLDER = """
import os, sys, time
from mpcl.files import exclusive
with exclusive(sys.argv[1]):
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
    print("held", flush=True)
    time.sleep(60)
"""


def _hold(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, start_new_session=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    """The holder and its forked child (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture
def held(tmp_path):
    """``tmp_path/out`` locked by another live process; yields (directory, that process)."""
    out = tmp_path / "out"
    proc = _hold(out)
    yield out, proc
    _kill(proc)


# -- the lock ----------------------------------------------------------------------------------

def test_a_second_writer_is_refused_at_once_naming_the_first(held):
    out, proc = held
    t0 = time.monotonic()
    with pytest.raises(OutputBusy) as e, exclusive(out, "out"):
        pytest.fail("two writers hold one directory")
    assert time.monotonic() - t0 < 5                     # at once, not after a wait
    message = str(e.value)
    assert message.startswith(f"{out} is in use by pid {proc.pid} on host {socket.gethostname()} since ")
    assert message.endswith("; wait for it or choose another out") and "\n" not in message


def test_the_lock_of_a_dead_writer_never_blocks(held):
    """SIGKILL leaves the lock file behind, with its holder's pid; the kernel has released the
    lock, and the forked child that still runs does not hold it (POSIX locks are not inherited)."""
    out, proc = held
    os.kill(proc.pid, signal.SIGKILL)                     # the holder only: its child lives on
    proc.wait()
    assert (out / LOCK_FILE).read_text()                  # what the dead holder wrote is still there
    with exclusive(out, "out") as d:
        assert d == out
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert (out / LOCK_FILE).read_text() == ""           # released: nothing claims it


def _taken_by_another_process(out: Path) -> bool:
    probe = subprocess.run([sys.executable, "-c", "import sys; from mpcl.files import exclusive\n"
                            "with exclusive(sys.argv[1]): pass", str(out)], cwd=ROOT, capture_output=True, text=True)
    return probe.returncode != 0 and "is in use by pid" in probe.stderr


def test_the_lock_is_reentrant_and_held_until_the_outermost_block_ends(tmp_path):
    out = tmp_path / "out"
    with exclusive(out, "out"):
        with exclusive(out / ".." / "out", "out"):        # the same directory, another spelling
            pass
        assert _taken_by_another_process(out)            # the inner block did not release it
    assert not _taken_by_another_process(out)


def test_starting_over_keeps_the_lock_in_place(tmp_path):
    from mpcl.engine.local import start_over

    out = tmp_path / "run"
    with exclusive(out, "out"):
        (out / "metrics.jsonl").write_text('{"epoch": 0}\n')
        aside = start_over(out)
        assert sorted(p.name for p in aside.iterdir()) == ["metrics.jsonl"]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
        assert _taken_by_another_process(out)            # still this process's directory


def test_an_output_that_cannot_be_created_names_its_key(tmp_path):
    with pytest.raises(OutputError, match=r"^out=/proc/mpcl: cannot create the directory \(no such file or "
                                          r"directory\)$"), exclusive("/proc/mpcl", "out"):
        pass
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match=rf"^--out {tmp_path}/afile: exists and is not a directory$"), \
            exclusive(tmp_path / "afile", "--out"):
        pass


# -- full disks ----------------------------------------------------------------------------------

class SmallDisk:
    """A tmpfs mounted at ``path``; :meth:`fill` leaves ``free`` bytes, :meth:`resize` grows it."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, free: int = 0) -> None:
        """Grow the filler file until at most ``free`` bytes are left."""
        with open(self.filler, "ab") as f:
            while self.free() > free:
                try:
                    f.write(b"\0" * max(4096, min(self.free() - free, 1 << 20)))
                    f.flush()
                except OSError:
                    break

    def empty(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a small file system to fill needs root (mount -t tmpfs)")
    yield SmallDisk(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_leaves_metrics_jsonl_without_a_torn_line(small_disk):
    from mpcl.tracking import MetricsLog

    log = MetricsLog(small_disk.path / "run" / "metrics.jsonl")
    log.append({"epoch": 0, "train/loss": 1.0})
    first = log.path.read_bytes()
    log.append({"epoch": 1, "train/loss": 0.7})
    before = log.path.read_bytes()
    small_disk.fill(free=0)
    with pytest.raises(WriteFailed) as e:
        log.append({"epoch": 2, "train/loss": 0.5, "padding": "x" * 10_000})
    assert str(e.value) == f"{log.path}: no space left on device (needs about 10 kB); its earlier lines are kept"
    assert log.path.read_bytes() == before                # cut back to the last whole line
    log.truncate_after(0)                                 # a resume from epoch 0 cuts in place: no space needed
    assert log.path.read_bytes() == first


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(small_disk):
    from mpcl.engine import checkpoint as ckpt

    path = small_disk.path / "run" / "checkpoints" / "last.pt"
    old = {"model": {"w": torch.zeros(1000)}, "epoch": 3, "config": {}}
    ckpt.save_atomic(old, path)
    small_disk.fill(free=500_000)
    new = {"model": {"w": torch.ones(1_000_000)}, "epoch": 4, "config": {}}  # 4 MB
    with pytest.raises(WriteFailed) as e:
        ckpt.save_atomic(new, path, kept="the checkpoint of epoch 3 is kept")
    assert str(e.value) == (f"{path}: no space left on device (needs about 4.0 MB); "
                            "the checkpoint of epoch 3 is kept")
    assert ckpt.load(path)["epoch"] == 3 and torch.equal(ckpt.load(path)["model"]["w"], old["model"]["w"])
    assert _no_temp_files(small_disk.path)
    small_disk.empty()                                    # space again: the same call succeeds
    ckpt.save_atomic(new, path)
    assert ckpt.load(path)["epoch"] == 4


def test_a_full_disk_under_a_report_is_one_line_and_keeps_the_old_page(small_disk, capsys):
    from mpcl import cli

    run_dir = small_disk.path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "train/loss": 1.0 / (e + 1)}) + "\n"
                                                   for e in range(3)))
    write_text_atomic(run_dir / "report" / "index.html", "the old page")
    small_disk.fill(free=0)
    with pytest.raises(SystemExit) as e:
        cli.main(["report", str(run_dir)])
    assert e.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(rf"error: {run_dir}/report/\w+\.png: no space left on device \(needs about \d+ kB\)", line)
    assert (run_dir / "report" / "index.html").read_text() == "the old page"
    assert _no_temp_files(small_disk.path)


@pytest.mark.slow
def test_a_full_disk_under_the_study_is_one_line_and_the_study_stays_readable(small_disk):
    import optuna

    from mpcl.files import storage_failure
    from mpcl.tracking.sweep_results import STUDY_FILE, open_study, storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(small_disk.path)
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for value in (0.1, 0.2):
        trial = study.ask()
        study.tell(trial, value)
    small_disk.fill(free=0)
    with pytest.raises(Exception) as e:     # SQLAlchemy's OperationalError: "database or disk is full"
        for _ in range(20):
            trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
            trial.set_user_attr("padding", "x" * 1_000_000)
            study.tell(trial, 0.3)
    failure = storage_failure(e.value, small_disk.path / STUDY_FILE)
    assert str(failure) == f"{small_disk.path / STUDY_FILE}: no space left on device"
    small_disk.empty()
    kept = open_study(url, "s")
    assert [t.value for t in kept.trials[:2]] == [0.1, 0.2]


# -- through the command line ------------------------------------------------------------------------

def _train_args(out: Path, fmnist_path: str, epochs: int = 3) -> list[str]:
    from tests.helpers.runs import tiny_overrides

    return tiny_overrides(out, "simclr", **{"data.path": fmnist_path, "data.subset": 256, "data.val_subset": 128,
                                            "data.batch_size": 64, "train.epochs": epochs,
                                            "tracking.wandb": "disabled"})


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """The process's exit code and stderr; killed (then the test fails) when it outlives ``timeout``."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_runs_started_into_one_out_at_once_one_trains_the_other_exits_2(tmp_path, fmnist_path):
    out = tmp_path / "run"
    procs = [_start("run.py", "train", "--no-ray", *_train_args(out, fmnist_path)) for _ in range(2)]
    results = [_finish(p) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    winner, loser = sorted(zip(results, procs), key=lambda r: r[0][0])
    (line,) = loser[0][1].strip().splitlines()
    assert re.fullmatch(rf"error: {out} is in use by pid {winner[1].pid} on host \S+ since \d\d:\d\d; "
                        "wait for it or choose another out", line)
    assert _epochs(out) == [0, 1, 2]                      # each epoch once


@pytest.mark.slow
def test_every_writer_takes_the_lock_before_anything_else(held, fmnist_path, tmp_path):
    """A run (through Ray and without), a sweep, its resume, data_prep, reproduce and dynamics into
    a directory another process writes: exit 2 at once, one line, nothing written there."""
    out, proc = held
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text((ROOT / "sweeps" / "fmnist_demo.yaml").read_text())
    commands = {
        "train --no-ray": ["run.py", "train", "--no-ray", *_train_args(out, fmnist_path)],
        "train": ["run.py", "train", *_train_args(out, fmnist_path)],
        "sweep": ["run.py", "sweep", str(sweep), "--out", str(out), f"data.path={fmnist_path}"],
        "sweep --resume": ["run.py", "sweep", str(sweep), "--out", str(out), "--resume"],
        "data_prep": ["-m", "data_prep", "fashion_mnist", "--src", fmnist_path, "--out", str(out)],
        "reproduce": ["run.py", "reproduce", "--no-ray", "--seeds", "1", "--out", str(out)],
        "dynamics": ["run.py", "dynamics", "--steps", "2", "--out", str(out)],
    }
    key = {"train --no-ray": "out", "train": "out"}
    started = {name: _start(*command) for name, command in commands.items()}   # all at once: a busy
    for name, command in started.items():                                     # directory stops each
        rc, err = _finish(command, timeout=180)
        assert rc == 2, (name, err)
        (line,) = err.strip().splitlines()
        assert re.fullmatch(rf"error: {out} is in use by pid {proc.pid} on host {re.escape(socket.gethostname())} "
                            rf"since \d\d:\d\d; wait for it or choose another {key.get(name, '--out')}", line), name
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def _checkpoint_size(overrides: list[str]) -> int:
    """The bytes of a checkpoint of this run (the method and optimizer of its config, saved)."""
    import io

    from mpcl.config.compose import load
    from mpcl.data.loaders import build_loaders
    from mpcl.engine.loop import checkpoint_state
    from mpcl.engine.runtime import build, runtime

    cfg = load(None, overrides)
    rt = runtime(cfg)
    method, optimizer = build(cfg, rt, build_loaders(cfg, 0, 1, rt.device))
    for p in method.parameters():     # one step: the optimizer's state (momentum) is in the checkpoint too
        p.grad = torch.zeros_like(p)
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(checkpoint_state(method, optimizer, rt.scaler, 0, 0, cfg, {"train/loss": 1.0}), buffer)
    return buffer.tell()


@pytest.mark.slow
def test_a_run_whose_disk_fills_mid_checkpoint_exits_1_and_resumes_once_there_is_space(small_disk, fmnist_path,
                                                                                          tmp_path):
    """The disk holds one checkpoint and a half: epoch 0's fits, epoch 1's temporary file does
    not (the old one stays until the new one is whole)."""
    from mpcl.engine import checkpoint as ckpt

    out = small_disk.path / "run"
    command = ("run.py", "train", "--no-ray", *_train_args(out, fmnist_path))
    size = _checkpoint_size(_train_args(out, fmnist_path))
    small_disk.resize(int(1.5 * size))
    rc, err = _finish(_start(*command))
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: {out}/checkpoints/last\.pt: no space left on device \(needs about [\d.]+ MB\); "
                        r"the checkpoint of epoch 0 is kept; the same command resumes once there is space", last), err
    assert "Traceback" not in err
    assert ckpt.load(out / "checkpoints" / "last.pt")["epoch"] == 0
    assert _no_temp_files(out)
    assert _epochs(out) == [0, 1]             # epoch 1 was measured; its checkpoint is what failed
    small_disk.resize(3 * size)
    rc, err = _finish(_start(*command))
    assert rc == 0, err
    assert f"resuming {out} after epoch 0" in err
    assert _epochs(out) == [0, 1, 2]          # epoch 1 again, once


def _prepare(src: Path, out: Path) -> subprocess.Popen:
    return _start("-m", "data_prep", "fashion_mnist", "--src", str(src), "--out", str(out), "--workers", "1")


@pytest.mark.slow
def test_two_data_preps_into_one_out_at_once_one_writes_the_other_exits_2(tmp_path):
    from tests.helpers.data import make_fashion_mnist

    make_fashion_mnist(tmp_path / "raw", n_train=200, n_val=50)
    out = tmp_path / "out"
    procs = [_prepare(tmp_path / "raw", out) for _ in range(2)]
    results = [_finish(p) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert re.fullmatch(rf"error: {out} is in use by pid \d+ on host \S+ since \d\d:\d\d; wait for it or choose "
                        "another --out", loser.strip())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sizes"] == {"train": 200, "val": 50}


@pytest.mark.slow
def test_data_prep_on_a_full_disk_exits_1_and_keeps_the_last_complete_output(small_disk, tmp_path):
    from tests.helpers.data import make_fashion_mnist

    from data_prep.beton import sha256_file

    make_fashion_mnist(tmp_path / "raw", n_train=200, n_val=50)
    small_disk.resize(48 << 20)                           # the output: two 16 MiB files (ffcv's pages)
    out = small_disk.path / "out"
    assert _finish(_prepare(tmp_path / "raw", out))[0] == 0
    before = {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()}
    small_disk.fill(free=100_000)
    rc, err = _finish(_prepare(tmp_path / "raw", out))
    assert rc == 1
    (line,) = err.strip().splitlines()
    assert re.fullmatch(rf"error: {out}/train\.beton: no space left on device.*; the folder's earlier files are kept",
                        line), line
    assert {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()} == before
    assert _no_temp_files(out)


@pytest.mark.slow
def test_data_prep_that_fills_the_disk_half_way_exits_at_once(small_disk, fmnist_path):
    """Fashion-MNIST (about 190 MB of .beton) onto 40 MB: the writer worker that meets the
    full disk stops, the others are stopped, and the work they left queued does not keep the
    process from exiting."""
    small_disk.resize(40 << 20)
    out = small_disk.path / "out"
    proc = _start("-m", "data_prep", "fashion_mnist", "--src", fmnist_path, "--out", str(out))
    rc, err = _finish(proc, timeout=120)
    assert rc == 1
    (line,) = err.strip().splitlines()
    assert re.fullmatch(rf"error: {out}/train\.beton: no space left on device \(a writer worker stopped after "
                        r"\d+ of 60000 samples\)", line), line
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


@pytest.mark.slow
def test_a_run_that_finds_its_betons_being_written_waits_for_them(held, tmp_path):
    """Two runs on a fresh checkout both find the Fashion-MNIST .beton files missing: the one
    that finds the other writing them waits for it, then reads what it wrote."""
    import threading

    from tests.helpers.data import make_fashion_mnist

    from data_prep import prepare_if_missing
    from mpcl.data.betons import BETON_FILES

    out, holder = held
    make_fashion_mnist(tmp_path / "raw", n_train=40, n_val=10)
    said: list[str] = []
    waiter = threading.Thread(target=lambda: said.append(prepare_if_missing("fashion_mnist", tmp_path / "raw", out,
                                                                            say=said.append)))
    waiter.start()
    deadline = time.monotonic() + 60
    while not any(s.startswith("waiting for the writer of") for s in said) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(f"waiting for the writer of {out}: {out} is in use by pid {holder.pid}" in s for s in said), said
    assert waiter.is_alive() and not any((out / f).exists() for f in BETON_FILES)
    _kill(holder)                                          # the writer ends (here: without writing)
    waiter.join(timeout=120)
    assert not waiter.is_alive() and said[-1] is True      # so this run writes them itself
    assert all((out / f).is_file() for f in BETON_FILES)
