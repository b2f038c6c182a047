"""The GPU check: everything a new CUDA machine must pass, in one command, ending in one table.

    scripts/gpu_check.sh [FASHION_MNIST_DIR]   (= python3 -m mpcl.bench.gpu_check --data DIR --record,
                                                the same as mpcl bench gpu-check --data DIR --record)

Needs only torch, torchvision, numpy, pyyaml, tqdm and pillow (no pytest, Ray, FFCV, numba,
wandb or kornia; kornia is compared when present). Three parts, each timed:

1. the CUDA checks below (plain functions; ``tests/test_cuda.py`` runs the same ones under
   pytest): the CUDA augmentation equals the CPU one given the same parameters; a bf16 step's
   loss is close to fp32's; SimSiam-Multi's memory bank and SimCLR-Attn's attention on the
   device agree with the CPU;
2. one epoch of each of the paper's four methods (simclr, simclr_attn, simsiam, simsiam_multi)
   on full Fashion-MNIST through ``run.py train --no-ray data.loader=torch`` (the four raw idx
   files from ``--data`` / ``$MPCL_FMNIST``);
3. ``mpcl bench step`` twice, its results under ``OUT/bench`` (and with ``--record`` in
   BENCHMARKS.md): SimCLR in all four settings, and the four methods interleaved at bf16 +
   channels_last (the attention and the bank against their base methods).

``--device cpu --quick`` runs the same on a CPU at toy scale (CI uses it to keep the script
working); the figures then mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from mpcl.bench.options import GpuCheck, add_gpu_check_arguments
from mpcl.bench.record import Output

PAPER_METHODS = ("simclr", "simclr_attn", "simsiam", "simsiam_multi")
# toy scale for --quick (CPU): heads small enough for a CI machine
QUICK = ["model.backbone=small_cnn", "model.projector_hidden=32", "model.projector_out=16",
         "model.predictor_hidden=8"]


# -- the checks: plain functions of a device, raising AssertionError with the numbers ---------

def _small(device: torch.device) -> bool:
    return device.type != "cuda"


def _method(name: str, device: torch.device, **extra):
    """A method built by the engine from its Fashion-MNIST preset (small on CPU), in fp32."""
    from mpcl.config.compose import load
    from mpcl.methods import build_method

    overrides = [f"method.name={name}", "data.batch_size=64", "train.precision=fp32",
                 *[f"{k}={v}" for k, v in extra.items()]]
    if _small(device):
        overrides += QUICK
    cfg = load(f"fmnist_{name}", overrides)
    torch.manual_seed(0)
    return build_method(cfg, 10, 256).to(device), cfg


def _batch(device: torch.device, n: int = 64, seed: int = 0):
    """Two augmented views of n random uint8 images (augmented on the CPU, moved to ``device``)."""
    from mpcl.data.augment import SSLAugment
    from mpcl.data.batch import Batch

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    aug = SSLAugment(32)
    views = [aug(x, generator=g).to(device) for _ in range(2)]
    index = torch.randperm(256, generator=g)[:n].to(device)
    return Batch(views, index, torch.randint(0, 10, (n,), generator=g).to(device))


def _copy_to(method, cfg, device: torch.device):
    """The same method (same weights and buffers) on another device."""
    from mpcl.methods import build_method

    other = build_method(cfg, 10, 256)
    other.load_state_dict({k: v.cpu() for k, v in method.state_dict().items()})
    return other.to(device)


@contextlib.contextmanager
def _full_fp32():
    """No TF32 (cuDNN uses it for fp32 convolutions by default): device-vs-CPU comparisons then
    differ by float rounding only."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> str:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    err = (got - want).abs().max().item() if got.numel() else 0.0
    bound = atol + rtol * want.abs().max().item()
    assert err <= bound, f"{name}: max |difference| {err:.3g} > {bound:.3g}"
    return f"{name} max diff {err:.1e}"


def check_augment_matches_cpu(device: torch.device) -> str:
    """SSLAugment on ``device`` (its eager tensor ops) equals the CPU pipeline (the compiled
    colour kernel when numba is present) when both draw their parameters from the same CPU
    generator: the SimCLR recipe, and one with blur, solarize and normalisation."""
    from mpcl.data.augment import SSLAugment

    x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    details = []
    for name, kw, atol in (("simclr recipe", {}, 1e-4),
                           ("blur+solarize+normalize", dict(blur_prob=0.5, solarize_prob=0.2, mean=(0.5,) * 3,
                                                            std=(0.25,) * 3, interpolation="bicubic"), 4e-4)):
        want = SSLAugment(32, **kw)(x, generator=torch.Generator().manual_seed(1))
        got = SSLAugment(32, cpu_kernel=False, **kw)(x.to(device), generator=torch.Generator().manual_seed(1))
        assert got.device.type == device.type and got.shape == want.shape
        details.append(_close(name, got, want, 0.0, atol))
    return "; ".join(details)


def check_bf16_step_close_to_fp32(device: torch.device) -> str:
    """The same SimCLR step (weights, batch) under bf16 autocast: loss within 2 % of fp32's, and a
    whole optimizer step leaves finite, changed weights."""
    from mpcl.config.compose import load
    from mpcl.engine.loop import TrainStep, optimizer_step
    from mpcl.engine.optim import build_optimizer
    from mpcl.engine.runtime import Runtime, runtime

    method, cfg = _method("simclr", device)
    batch = _batch(device)
    with torch.no_grad():
        fp32 = method.training_step(batch, 0).loss
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            bf16 = method.training_step(batch, 0).loss
    detail = _close("loss", bf16.float(), fp32, 2e-2, 0.0)
    rt: Runtime = runtime(load(None, ["train.precision=bf16", f"train.device={device.type}"]))
    before = [p.detach().clone() for p in method.parameters()]
    optimizer = build_optimizer(cfg, method.param_groups())
    out = optimizer_step(TrainStep(method), method, optimizer, rt, batch, 0, 0, 10)
    assert torch.isfinite(out.loss).item(), f"bf16 step loss {out.loss.item()}"
    assert all(torch.isfinite(p).all().item() for p in method.parameters()), "bf16 step: non-finite weights"
    assert any(not torch.equal(a, p) for a, p in zip(before, method.parameters())), "bf16 step changed nothing"
    return f"{detail} (fp32 {fp32.item():.4f}, bf16 {bf16.item():.4f})"


def check_bank_on_device(device: torch.device) -> str:
    """SimSiam-Multi's bank on ``device``: epoch 0's writes (view 2's projections) are what epoch
    1 reads, and epoch 1's loss (mixing the bank in) equals the same model's on the CPU."""
    method, cfg = _method("simsiam_multi", device, **{"method.bank_warmup_epochs": 0})
    batch = _batch(device)
    assert method.bank.snapshot.device.type == device.type
    with torch.no_grad():
        method.training_step(batch, 0)
        method.bank.end_epoch(0)
        _, _, z2, _, _ = method.encode_views(batch)
    values, valid = method.bank.read(batch.index)
    assert valid.all().item(), "bank: samples written in epoch 0 are not valid in epoch 1"
    details = [_close("bank == z2", values, z2, 1e-5, 1e-6)]
    cpu = _copy_to(method, cfg, torch.device("cpu"))
    cpu_batch = type(batch)([v.cpu() for v in batch.views], batch.index.cpu(), batch.label.cpu())
    with torch.no_grad(), _full_fp32():
        got = method.training_step(batch, 1).loss
        want = cpu.training_step(cpu_batch, 1).loss
    details.append(_close("epoch-1 loss vs CPU", got, want, 1e-4, 1e-5))
    return "; ".join(details)


def check_attention_on_device(device: torch.device) -> str:
    """SimCLR-Attn on ``device``: loss and attention weights equal the same model's on the CPU,
    and attention_weight=0 is plain SimCLR on the device."""
    method, cfg = _method("simclr_attn", device)
    batch = _batch(device)
    cpu = _copy_to(method, cfg, torch.device("cpu"))
    cpu_batch = type(batch)([v.cpu() for v in batch.views], batch.index.cpu(), batch.label.cpu())
    with torch.no_grad(), _full_fp32():
        got, want = method.training_step(batch, 0), cpu.training_step(cpu_batch, 0)
    details = [_close("loss vs CPU", got.loss, want.loss, 1e-4, 1e-5)]
    for k in ("train/attn_weight_max", "train/attn_weight_min"):
        details.append(_close(k.split("/")[1], got.metrics[k], want.metrics[k], 1e-4, 1e-5))
    plain, _ = _method("simclr", device, **{"method.temperature": cfg.method.temperature})
    uniform, _ = _method("simclr_attn", device, **{"method.attention_weight": 0.0})
    plain.load_state_dict(method.state_dict())
    uniform.load_state_dict(method.state_dict())
    with torch.no_grad():
        a0, s = uniform.training_step(batch, 0).loss, plain.training_step(batch, 0).loss
    details.append(_close("alpha=0 vs simclr", a0, s, 1e-5, 1e-6))
    return "; ".join(details)


CHECKS = (check_augment_matches_cpu, check_bf16_step_close_to_fp32, check_bank_on_device, check_attention_on_device)


# -- the command ------------------------------------------------------------------------------

@dataclass
class Line:
    part: str
    item: str
    ok: bool
    seconds: float
    result: str


def run_checks(device: torch.device, say) -> list[Line]:
    lines = []
    for check in CHECKS:
        t0 = time.perf_counter()
        try:
            detail, ok = check(device), True
        except Exception as e:  # every check runs; the table says which failed and why
            detail, ok = f"{type(e).__name__}: {e}", False
            say(traceback.format_exc())
        lines.append(Line("check", check.__name__.removeprefix("check_"), ok, time.perf_counter() - t0, detail))
        say(f"{'PASS' if ok else 'FAIL'} {check.__name__}: {detail}")
    return lines


def run_epochs(data: str, out: Path, device: torch.device, quick: bool, say) -> list[Line]:
    """One epoch of each paper method on Fashion-MNIST, each in its own ``mpcl train --no-ray``."""
    lines = []
    for m in PAPER_METHODS:
        run_dir = out / f"epoch_{m}"
        args = [sys.executable, "-m", "mpcl", "train", "--no-ray", "--config", f"fmnist_{m}",
                "data.loader=torch", f"data.path={data}", "train.epochs=1", "train.resume=false",
                f"train.device={device.type}", "tracking.wandb=disabled", "train.progress=false", f"out={run_dir}"]
        if quick:
            args += [*QUICK, "data.subset=256", "data.val_subset=128", "data.batch_size=64"]
        t0 = time.perf_counter()
        r = subprocess.run(args, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            lines.append(Line("epoch", m, False, wall, (r.stderr.strip().splitlines() or ["?"])[-1][:200]))
            say(r.stdout + r.stderr)
            continue
        metrics = json.loads((run_dir / "metrics.jsonl").read_text().strip().splitlines()[-1])
        result = (f"{metrics['time/samples_per_s']:,.0f} samples/s (epoch {metrics['time/epoch_s']:.1f} s, loading "
                  f"included), kNN {metrics['val/knn_top1']:.1f} %, loss {metrics['train/loss']:.3f}")
        lines.append(Line("epoch", m, True, wall, result))
        say(f"epoch {m}: {result}")
    return lines


def run_benches(output: Output, device: torch.device, quick: bool, command: str, say) -> tuple[list[Line], dict]:
    from mpcl.bench.options import StepBench
    from mpcl.bench.step import bench_step

    lines, rates = [], {}
    small = dict(backbone="small_cnn", batch_size=32, samples=64, steps=1, rounds=2,
                 overrides=(*QUICK[1:], "method.queue_size=64")) if quick else {}
    runs = [("simclr, every setting", dict(methods=("simclr",))),
            ("paper methods, bf16_cl", dict(methods=PAPER_METHODS, settings=("bf16_cl",), use_kornia=False))]
    for title, kw in runs:
        t0 = time.perf_counter()
        try:
            report = bench_step(StepBench(device=str(device), **small, **kw), output, f"{command} ({title})", say)
        except Exception as e:
            lines.append(Line("bench", title, False, time.perf_counter() - t0, f"{type(e).__name__}: {e}"))
            say(traceback.format_exc())
            continue
        parts = []
        for row in report.rows:
            if (row.kind not in ("step", "augment", "kornia")
                    or (row.kind == "kornia" and not kw.get("use_kornia", True))):
                continue
            name = row.key.split("/", 1)[1] if len(kw["methods"]) == 1 else row.key
            if row.skipped:
                parts.append(f"{name}: skipped ({row.skipped})")
            else:
                rates[row.key] = row.samples_per_s
                parts.append(f"{name}: {row.samples_per_s:,.0f}/s")
        lines.append(Line("bench", title, not any(r.skipped for r in report.rows if r.kind == "step"),
                          time.perf_counter() - t0, "; ".join(parts)))
    return lines, rates


def goals(rates: dict, epochs: list[Line]) -> list[Line]:
    """The performance goals of a GPU node, as measured here (figures, not pass/fail of the check)."""
    out = []
    best = rates.get("simclr/bf16_cl_compile/step")
    fp32 = rates.get("simclr/fp32/step")
    if best and fp32:
        out.append(Line("goal", "simclr step >= 20,000 samples/s, >= 2.5x fp32", best >= 20_000 and best >= 2.5 * fp32,
                        0.0, f"{best:,.0f} samples/s, {best / fp32:.2f}x fp32 eager"))
    for m, base in (("simclr_attn", "simclr"), ("simsiam_multi", "simsiam")):
        a, b = rates.get(f"{m}/bf16_cl/step"), rates.get(f"{base}/bf16_cl/step")
        if a and b:
            out.append(Line("goal", f"{m} within 5 % of {base}", a >= 0.95 * b, 0.0, f"{a / b:.1%} of {base}"))
    step = rates.get("simclr/bf16_cl/step")
    epoch = next((line for line in epochs if line.item == "simclr" and line.ok), None)
    if step and epoch:
        rate = float(epoch.result.split(" samples/s")[0].replace(",", ""))
        out.append(Line("goal", "fmnist simclr epoch >= 90 % of the step", rate >= 0.9 * step, 0.0,
                        f"{rate / step:.0%} of bf16_cl step (the epoch: the preset's precision / channels_last)"))
    return out


def summary(lines: list[Line]) -> str:
    rows = ["| part | item | result | seconds | detail |", "| --- | --- | --- | ---: | --- |"]
    for line in lines:
        verdict = ("met" if line.ok else "not met") if line.part == "goal" else ("PASS" if line.ok else "FAIL")
        rows.append(f"| {line.part} | {line.item} | {verdict} | {line.seconds:.1f} | {line.result} |")
    return "\n".join(rows)


def run(check: GpuCheck, command: str = "mpcl bench gpu-check", say=None) -> int:
    """The whole check and its table: 0 when every check, epoch and bench passed, else 1. A bad
    option is a ``ValueError`` before any work. ``command`` is recorded with bench step's figures."""
    from mpcl.data.sources import fashion_mnist_present

    say = say or (lambda *x: print(*x, flush=True))
    device = torch.device(check.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {check.device}: no CUDA device is visible (use --device cpu --quick for a "
                         "dry run)")
    if "epochs" not in check.skip and not fashion_mnist_present(check.data):
        raise ValueError(f"--data {check.data}: the four Fashion-MNIST idx files are not there "
                         "(train-images-idx3-ubyte[.gz], train-labels-..., t10k-images-..., t10k-labels-...)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    say(f"gpu_check on {name}: torch {torch.__version__}, python {sys.version.split()[0]}")
    t0 = time.perf_counter()
    lines: list[Line] = []
    if "checks" not in check.skip:
        lines += run_checks(device, say)
    epochs = run_epochs(check.data, Path(check.out), device, check.quick, say) if "epochs" not in check.skip else []
    lines += epochs
    rates = {}
    if "bench" not in check.skip:
        output = Output(Path(check.out) / "bench", Path(check.record) if check.record else None)
        bench_lines, rates = run_benches(output, device, check.quick, command, say)
        lines += bench_lines
    lines += goals(rates, epochs)
    say(f"\ngpu_check on {name}, {time.perf_counter() - t0:.0f} s in all\n")
    say(summary(lines))
    return 0 if all(line.ok for line in lines if line.part != "goal") else 1


def main(argv: list[str] | None = None) -> int:
    """``python3 -m mpcl.bench.gpu_check``: the check where only torch and its few companions are
    installed (``mpcl bench gpu-check`` runs the same)."""
    prog = "python3 -m mpcl.bench.gpu_check"
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gpu_check_arguments(p)
    try:
        return run(GpuCheck.from_args(p.parse_args(argv)), prog)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
