"""``mpcl bench step``: the command on CPU, its report, and what DDP sends between workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpcl.bench.options import StepBench
from mpcl.bench.record import Output
from mpcl.bench.step import bench_step
from mpcl.bench.step_report import format_table
from mpcl.bench.step_settings import Row, StepReport, peak_bf16_flops

ROOT = Path(__file__).resolve().parent.parent
SMALL_HEADS = ["model.projector_hidden=32", "model.projector_out=16", "model.predictor_hidden=8",
               "method.queue_size=64"]


def tiny(out_file="", command=None, **kw):
    """bench_step at toy scale; ``out_file``: the file recorded in ('' = no output at all)."""
    args = dict(backbone="small_cnn", batch_size=16, samples=32, steps=1, rounds=2, device="cpu",
                overrides=SMALL_HEADS)
    args.update(kw)
    output = Output(Path(out_file).parent / "results", Path(out_file)) if out_file else Output(None, None)
    return bench_step(StepBench(**args), output, command, say=lambda *a: None)


def test_cpu_step_bench_measures_every_setting_and_writes_its_section(tmp_path):
    out = tmp_path / "BENCH.md"
    out.write_text("# Benchmarks\n\nhand-written text stays\n")
    report = tiny(settings=["fp32", "bf16"], out_file=out, command="python run.py bench step (test)")
    for setting in ("fp32", "bf16"):
        for kind in ("step", "model"):
            row = report.row(f"simclr/{setting}/{kind}")
            assert not row.skipped and row.samples_per_s > 0 and row.flops_per_step > 0
    assert report.row("simclr/augment").samples_per_s > 0
    kornia = report.row("simclr/kornia")
    assert kornia.samples_per_s > 0 or kornia.skipped.startswith("kornia is not installed")
    text = out.read_text()
    assert "hand-written text stays" in text
    assert "<!-- bench:step:cpu:simclr:1:start -->" in text and "| simclr | bf16 autocast |" in text
    assert "python run.py bench step (test)" in text
    tiny(settings=["fp32"], out_file=out, use_kornia=False)   # a rerun replaces the section
    text = out.read_text()
    assert text.count("bench:step:cpu:simclr:1:start") == 1 and "| simclr | bf16 autocast |" not in text


def test_a_setting_that_fails_is_reported_not_fatal(tmp_path):
    report = tiny(settings=["fp32", "bf16"], overrides=SMALL_HEADS + ["model.backbone=no_such_net"],
                  out_file="", use_kornia=False)
    assert all(report.row(f"simclr/{s}/step").skipped.startswith("ConfigError") for s in ("fp32", "bf16"))
    assert "skipped: ConfigError" in format_table(report)


def test_mfu_uses_the_flop_count_and_the_device_peak():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA L40S") == 362e12 and peak_bf16_flops("Some GPU") is None
    # 9.89e12 FLOPs per step of 512 samples at 5,120 samples/s: 10 steps/s, 98.9 TFLOP/s, 10 % of an H100
    rows = [Row("simclr/fp32/step", "simclr", "step", "fp32", 2560.0, flops_per_step=9.89e12),
            Row("simclr/fp32/model", "simclr", "model", "fp32", 3000.0, flops_per_step=9.89e12),
            Row("simclr/bf16/step", "simclr", "step", "bf16", 5120.0, flops_per_step=9.89e12),
            Row("simclr/bf16/model", "simclr", "model", "bf16", 6400.0, flops_per_step=9.89e12)]
    report = StepReport(rows, "cuda", "NVIDIA H100 80GB HBM3", 1, 512, "resnet18", 32, "cifar10", 20, 4)
    line = next(row for row in format_table(report).splitlines() if "bf16 autocast" in row)
    assert "| 5,120 | 2.00x | 6,400 | 20% |" in line and "| 98.9 | 10.0% |" in line
    unknown = StepReport(rows, "cuda", "Some GPU", 1, 512, "resnet18", 32, "cifar10", 20, 4)
    assert "unknown GPU" in format_table(unknown)


@pytest.mark.slow
def test_two_gloo_workers_keep_banks_and_queues_out_of_ddp_broadcast():
    """After steps on 2 workers the banks / queue agree on both, and DDP's per-step buffer
    broadcast carries exactly the other buffers (BN statistics), never a bank or queue."""
    report = tiny(methods=["simsiam_multi", "moco"], settings=["fp32"], workers=2, out_file="", use_kornia=False)
    for method in ("simsiam_multi", "moco"):
        row = report.row(f"{method}/fp32/step")
        assert not row.skipped, row.skipped
        assert report.buffers_agree[method]
        assert report.consistent_bytes[method] > 0
        assert row.comm["buffers"] == report.broadcast_expected[method]
        assert row.comm["gradients"] > 0 and row.comm["method"] > 0


def test_bad_setting_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "bench", "step", "--settings", "fp32,fp8",
                        "--record", str(tmp_path / "b.md"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --settings fp8: unknown; known: fp32, bf16, bf16_cl, bf16_cl_compile"
    assert not (tmp_path / "b.md").exists() and not (tmp_path / "out").exists()


BLOCKED = ("ray", "ffcv", "optuna", "wandb", "numba", "kornia")
# sitecustomize runs at the start of every Python process whose path holds it (the subprocesses
# that run.py and gpu_check start too): these packages then fail to import, as on a bare CUDA
# machine that has only torch, torchvision, numpy, pyyaml, tqdm and pillow.
SITECUSTOMIZE = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed on this machine (blocked by the test)")
        return None
sys.meta_path.insert(0, Blocked())
"""


def run_bare(args: list[str], tmp_path, timeout: int = 600) -> subprocess.CompletedProcess:
    site = tmp_path / "bare_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=set(BLOCKED)))
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=timeout)


@pytest.mark.slow
def test_train_bench_and_gpu_check_run_with_only_the_bare_packages(tmp_path):
    """run.py train --no-ray (torch loader), run.py bench step and the GPU check's dry run, with
    ray, ffcv, optuna, wandb, numba and kornia unimportable."""
    from tests.helpers.data import make_fashion_mnist

    raw = tmp_path / "fmnist"
    make_fashion_mnist(raw, n_train=300, n_val=150)
    r = run_bare(["-c", "import numba"], tmp_path)
    assert r.returncode != 0 and "blocked by the test" in r.stderr   # the blocker works
    r = run_bare([str(ROOT / "run.py"), "train", "--no-ray", "data.loader=torch", f"data.path={raw}",
                  "tracking.wandb=disabled", "method.name=simsiam_multi", "model.backbone=small_cnn",
                  "data.batch_size=32", "train.epochs=2", "method.bank_warmup_epochs=1", "optim.warmup_epochs=0",
                  "train.progress=false", "model.projector_hidden=32", "model.projector_out=16",
                  "model.predictor_hidden=8", f"out={tmp_path / 'run'}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file() and '"epoch": 1' in r.stdout
    r = run_bare([str(ROOT / "run.py"), "bench", "step", "--batch-size", "16", "--samples", "32", "--steps", "1",
                  "--rounds", "2", "--settings", "fp32", "--record", str(tmp_path / "B.md"),
                  *[a for o in SMALL_HEADS for a in ("--override", o)]], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    text = (tmp_path / "B.md").read_text()
    assert "| simclr | fp32 eager |" in text and "skipped: kornia is not installed" in text
    r = run_bare(["-m", "mpcl.bench.gpu_check", "--device", "cpu", "--quick", "--data", str(raw),
                  "--out", str(tmp_path / "gc"), "--record", str(tmp_path / "G.md")], tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    table = r.stdout[r.stdout.index("| part | item |"):]
    for item in ("augment_matches_cpu", "bf16_step_close_to_fp32", "bank_on_device", "attention_on_device",
                 "simclr", "simclr_attn", "simsiam", "simsiam_multi", "simclr, every setting"):
        assert f"| {item} | PASS |" in table, table


@pytest.mark.parametrize("method, expected", [
    ("simclr", set()),
    ("simsiam_multi", {"bank.snapshot", "bank.pending", "bank.snapshot_valid", "bank.pending_valid",
                       "bank.snapshot_epoch"}),
    ("moco", {"queue.keys", "queue.ptr"}),
    ("mcl", {"queues.0.keys", "queues.0.ptr", "queues.1.keys", "queues.1.ptr"}),
    ("spcl", {"pseudo_labels", "clustered_epoch"}),
])
def test_worker_consistent_buffers_are_the_banks_queues_and_pseudo_labels(method, expected):
    """What DDP is told to leave out of its broadcast: exactly the buffers kept consistent by
    gathered writes or rank-0 broadcasts; BN statistics stay in."""
    from mpcl.config.compose import declared_only, load
    from mpcl.methods import build_method

    cfg = load(None, declared_only(method, [f"method.name={method}", "model.backbone=small_cnn", *SMALL_HEADS]))
    m = build_method(cfg, 10, 64)
    names = set(m.worker_consistent_buffers())
    assert names == expected
    assert all(m.get_buffer(n) is not None for n in names)
    assert any(n.endswith("running_mean") for n, _ in m.named_buffers() if n not in names)
