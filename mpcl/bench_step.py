"""``run.py bench step``: samples/s of a method's whole training step, setting against setting.

One step is what ``engine.loop.fit`` does per batch: the on-device augmentation of a uint8
batch into two views (``TensorTrainLoader``), then ``engine.loop.optimizer_step`` (forward
and loss under autocast, backward, optimizer step, the method's post-step update). Every
setting is built by the engine's own ``build`` / ``runtime`` / ``distributed_step`` from a
config, so the figures are those of ``run.py train`` with ``train.precision``,
``model.channels_last`` and ``train.compile`` set accordingly:

  fp32             fp32 eager (the seed repositories' step)
  bf16             bf16 autocast
  bf16_cl          bf16 autocast + channels_last (the engine applies it on CUDA only)
  bf16_cl_compile  the above + torch.compile of the step module

Per setting it also times the step without the augmentation (a fixed, already augmented
batch), and once the augmentation alone (mpcl's, and kornia.augmentation's equivalent
pipeline when kornia is installed), so the report shows where the time goes. All of them are
timed in rounds, alternately (round 0 is a warm-up, excluded: cuDNN autotuning, compilation,
numba JIT), so a change in the machine's load hits every setting alike.

Reported per row: samples/s (a sample is two views), the ratio to fp32 eager, peak memory
(CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before the timed steps;
CPU: the growth of the process's peak RSS, ``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
during the row's warm-up round), the model FLOPs per step (``torch.utils.flop_counter``, one
eager step: forward + backward) as achieved TFLOP/s, and on CUDA the model FLOPs utilisation
against the device's dense bf16 peak (a small table of known devices; others: omitted).

With ``workers > 1`` the same measurement runs in that many spawned processes in one process
group (gloo on CPU, NCCL on GPUs, one GPU each), the model wrapped in DDP as in training, and
each row also reports the bytes rank 0 hands to collectives per step: gradient all-reduce
(counted in a DDP communication hook that does the default all-reduce), DDP's buffer
broadcast and the method's own collectives (gathers, reductions), counted by wrapping the
``torch.distributed`` functions. Buffers every worker keeps consistent itself (banks, queues)
must not appear in the broadcast; the workers also check that they still agree after the run.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import resource
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setting:
    name: str
    label: str
    precision: str          # train.precision
    channels_last: bool     # model.channels_last (the engine applies it on CUDA only)
    compile: bool           # train.compile


SETTINGS: dict[str, Setting] = {s.name: s for s in [
    Setting("fp32", "fp32 eager", "fp32", False, False),
    Setting("bf16", "bf16 autocast", "bf16", False, False),
    Setting("bf16_cl", "bf16 + channels_last", "bf16", True, False),
    Setting("bf16_cl_compile", "bf16 + channels_last + compile", "bf16", True, True),
]}


@dataclass(frozen=True)
class Defaults:
    backbone: str
    batch_size: int
    settings: tuple[str, ...]
    steps: int       # steps per timed block
    rounds: int      # rounds of blocks, the first a warm-up
    samples: int     # dataset size the batches are drawn from (memory banks are this long)


# CUDA: the real measure (the paper's CIFAR recipe). CPU: a small model in fp32 so CI runs the
# command quickly. bf16 autocast runs on CPUs but without native bf16 units it is slower than
# fp32 (0.53x on the development machine), and compile needs a C++ toolchain and minutes: both
# only when asked for with --settings (channels_last is applied on CUDA only).
CUDA_DEFAULTS = Defaults("resnet18", 512, tuple(SETTINGS), 20, 4, 50_000)
CPU_DEFAULTS = Defaults("small_cnn", 64, ("fp32",), 4, 3, 1_024)

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) by a substring of the device name, first
# match wins (so "H100 PCIe" is tried before "H100").
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
    ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
)

PRESET_PREFIX = {"fashion_mnist": "fmnist"}


def peak_bf16_flops(device_name: str) -> float | None:
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


@dataclass
class Row:
    key: str                    # unique within a run, e.g. "simclr/fp32/step"
    method: str
    kind: str                   # step | model (no augmentation) | augment | kornia
    setting: str = ""
    samples_per_s: float = 0.0
    peak_bytes: int = 0
    flops_per_step: float = 0.0  # per worker
    comm: dict[str, float] = field(default_factory=dict)   # category -> bytes per step (rank 0)
    skipped: str = ""            # why the row was not measured


@dataclass
class StepReport:
    rows: list[Row]
    device: str
    device_name: str
    workers: int
    batch_size: int             # global
    backbone: str
    image_size: int
    dataset: str
    steps: int
    rounds: int
    buffers_agree: dict[str, bool] = field(default_factory=dict)   # method -> worker-consistent buffers equal
    consistent_bytes: dict[str, int] = field(default_factory=dict)  # method -> bytes of those buffers
    broadcast_expected: dict[str, int] = field(default_factory=dict)  # method -> bytes of the other buffers

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)


# -- configs and the step ---------------------------------------------------------------------

def method_config(method: str, dataset: str, backbone: str, batch_size: int, device: str,
                  setting: Setting, overrides: list[str]):
    """The method's preset for ``dataset`` (``configs/<dataset>_<method>.yaml``, else the
    defaults) with the bench's scale and this setting."""
    from mpcl.config import load

    preset = ROOT / "configs" / f"{PRESET_PREFIX.get(dataset, dataset)}_{method}.yaml"
    return load(str(preset) if preset.is_file() else None, [
        f"method.name={method}", f"data.dataset={dataset}", "data.loader=torch",
        f"data.batch_size={batch_size}", f"model.backbone={backbone}", f"train.device={device}",
        f"train.precision={setting.precision}", f"model.channels_last={str(setting.channels_last).lower()}",
        f"train.compile={str(setting.compile).lower()}",
        "method.bank_warmup_epochs=0",  # simsiam_multi reads its bank at the timed epoch (1)
        *overrides])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepRunner:
    """One (method, setting): the engine's model, optimizer and step on synthetic uint8 data."""

    EPOCH = 1   # the timed epoch: banks were written in epoch 0 and are read now

    def __init__(self, cfg, images: torch.Tensor, labels: torch.Tensor, device: torch.device, comm=None):
        from mpcl import distributed as dist
        from mpcl.data.datasets import get_dataset
        from mpcl.data.batch import Loaders
        from mpcl.data.recipe import eval_transform, ssl_augment
        from mpcl.data.tensor_loader import EvalLoader, TensorTrainLoader
        from mpcl.engine.loop import build, distributed_step, runtime

        self.cfg, self.device = cfg, device
        spec = get_dataset(cfg.data.dataset)
        self.rt = runtime(cfg)
        rank, world = dist.rank(), dist.world_size()
        self.loader = TensorTrainLoader(images, labels, cfg.data.batch_size, rank, world, cfg.train.seed,
                                        ssl_augment(cfg, spec), device)
        train_eval = EvalLoader(images, labels, 512, eval_transform(cfg, spec), device, rank, world)
        loaders = Loaders(self.loader, train_eval, train_eval, self.loader, spec, len(images))
        self.method, self.optimizer = build(cfg, self.rt, loaders)
        self.method.train()
        self.method.on_epoch_start(self.EPOCH, loaders, self.rt.autocast)  # SPCL clusters here
        self.method.train()
        self.step_module = distributed_step(self.method, device)
        if comm is not None and dist.is_distributed():
            comm.attach(self.step_module)
        if cfg.train.compile:
            self.step_module = torch.compile(self.step_module)
        self.loader.set_epoch(self.EPOCH)
        self._batches = iter(())
        self.fixed = self.next_batch()
        self.step_count = 0
        if hasattr(self.method, "bank"):   # epoch 0's writes become the snapshot read in epoch 1
            self.step()
            self.method.on_epoch_end(0)

    def next_batch(self):
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            return next(self._batches)

    def step(self, batch=None) -> None:
        from mpcl.engine.loop import optimizer_step

        optimizer_step(self.step_module, self.method, self.optimizer, self.rt,
                       self.next_batch() if batch is None else batch, self.EPOCH, self.step_count, 10**9)
        self.step_count += 1

    def count_flops(self) -> float:
        """FLOPs of one eager step (forward + backward) on the fixed batch."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            with self.rt.autocast():
                out = self.method.training_step(self.fixed, self.EPOCH)
            out.loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())


def kornia_augment(cfg):
    """kornia.augmentation's equivalent of ``ssl_augment(cfg)``: RandomResizedCrop, flip,
    ColorJitter (p = data.jitter_prob), RandomGrayscale, every parameter drawn per sample."""
    import kornia.augmentation as K

    from mpcl.data.datasets import get_dataset

    d = cfg.data
    s = d.jitter_strength
    size = get_dataset(d.dataset).image_size
    return torch.nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(d.crop_scale_min, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s, p=d.jitter_prob),
        K.RandomGrayscale(p=d.grayscale_prob),
    )


# -- communication counting -------------------------------------------------------------------

def _nbytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    return sum(_nbytes(x) for x in t)


class CommCounter:
    """Bytes handed to collectives, by the row being timed (``current``) and category."""

    # torch.distributed function -> (category, position of the tensor(s) it sends)
    WRAPPED = {"all_reduce": ("method", 0), "broadcast": ("method", 0), "all_gather": ("method", 1),
               "all_gather_into_tensor": ("method", 1), "reduce_scatter_tensor": ("method", 1),
               "_broadcast_coalesced": ("buffers", 1)}   # DDP's buffer broadcast

    def __init__(self):
        self.current: str | None = None
        self.bytes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._originals: dict[str, Callable] = {}

    def add(self, category: str, n: int) -> None:
        if self.current is not None:
            self.bytes[self.current][category] += n

    def install(self) -> None:
        import torch.distributed as tdist

        for name, (category, position) in self.WRAPPED.items():
            original = self._originals[name] = getattr(tdist, name)

            def wrapper(*args, _original=original, _category=category, _position=position, **kwargs):
                self.add(_category, _nbytes(args[_position]))
                return _original(*args, **kwargs)

            setattr(tdist, name, wrapper)

    def uninstall(self) -> None:
        import torch.distributed as tdist

        for name, original in self._originals.items():
            setattr(tdist, name, original)
        self._originals.clear()

    def attach(self, ddp_module) -> None:
        """DDP's default gradient all-reduce (mean over workers), counted."""
        import torch.distributed as tdist

        all_reduce = self._originals.get("all_reduce", tdist.all_reduce)

        def hook(_state, bucket):
            buf = bucket.buffer()
            self.add("gradients", _nbytes(buf))
            buf.div_(tdist.get_world_size())
            return all_reduce(buf, async_op=True).get_future().then(lambda f: f.value()[0])

        ddp_module.register_comm_hook(None, hook)


def buffers_agree(method) -> bool:
    """Every worker-consistent buffer of ``method`` is bit-identical on every worker."""
    import torch.distributed as tdist

    digest = hashlib.sha256()
    for name in method.worker_consistent_buffers():
        digest.update(method.get_buffer(name).detach().cpu().contiguous().numpy().tobytes())
    digests = [None] * tdist.get_world_size()
    tdist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


# -- measuring --------------------------------------------------------------------------------

def _peak_start(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB


def _peak_growth(device: torch.device, start: int) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) - start
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start


def _skip_reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"


def measure(methods: list[str], settings: list[str], dataset: str, backbone: str, batch_size: int,
            samples: int, steps: int, rounds: int, device: torch.device, overrides: list[str],
            use_kornia: bool, say) -> tuple[list[Row], dict, dict, dict]:
    """The interleaved measurement in this process (one worker of the group, or the only one)."""
    from mpcl import distributed as dist
    from mpcl.data.datasets import get_dataset

    spec = get_dataset(dataset)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (samples, 3, spec.image_size, spec.image_size), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, spec.num_classes, (samples,), generator=gen)
    comm = None
    if dist.is_distributed():
        comm = CommCounter()
        comm.install()

    rows: list[Row] = []
    blocks: list[tuple[Row, Callable[[], None]]] = []   # (row, one step of it)
    runners: dict[str, StepRunner] = {}
    for method in methods:
        for name in settings:
            s = SETTINGS[name]
            step_row = Row(f"{method}/{name}/step", method, "step", name)
            model_row = Row(f"{method}/{name}/model", method, "model", name)
            rows += [step_row, model_row]
            if s.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                step_row.skipped = model_row.skipped = "bf16 is not supported by this GPU"
                continue
            try:
                cfg = method_config(method, dataset, backbone, batch_size, device.type, s, overrides)
                runner = StepRunner(cfg, images, labels, device, comm)
            except Exception as e:  # an unsupported setting is reported, not fatal
                step_row.skipped = model_row.skipped = _skip_reason(e)
                say(f"  {method} {name}: skipped ({step_row.skipped})")
                continue
            runners[step_row.key] = runner
            blocks += [(step_row, runner.step), (model_row, lambda r=runner: r.step(r.fixed))]
    first = next(iter(runners.values()), None)
    if first is not None:
        aug_row = Row(f"{methods[0]}/augment", methods[0], "augment")
        rows.append(aug_row)
        blocks.append((aug_row, first.next_batch))
        k_row = Row(f"{methods[0]}/kornia", methods[0], "kornia")
        rows.append(k_row)
        if not use_kornia:
            k_row.skipped = "not asked for (--no-kornia)"
        else:
            try:
                k_aug = kornia_augment(first.cfg).to(device)
                x_u8 = images[:first.loader.local_batch].to(device)

                def kornia_views(k_aug=k_aug, x_u8=x_u8):
                    x = x_u8.float().div_(255)
                    return k_aug(x), k_aug(x)

                blocks.append((k_row, kornia_views))
            except ImportError as e:
                k_row.skipped = f"kornia is not installed ({e})"

    # FLOPs per step: one eager step per method (the same count for every setting)
    for method in methods:
        eager = next((r for key, r in runners.items() if key.startswith(f"{method}/") and not r.cfg.train.compile), None)
        if eager is not None:
            flops = eager.count_flops()
            for row in rows:
                if row.method == method and row.kind in ("step", "model"):
                    row.flops_per_step = flops

    local_batch = first.loader.local_batch if first is not None else batch_size
    global_batch = local_batch * dist.world_size()
    timed: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for rnd in range(rounds):
        for row, one in list(blocks):
            if row.skipped:
                continue
            if comm is not None:
                comm.current = row.key if rnd > 0 else None
            try:
                _sync(device)
                start = _peak_start(device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    one()
                _sync(device)
                dt = time.perf_counter() - t0
                if rnd == 0 or device.type == "cuda":
                    row.peak_bytes = max(row.peak_bytes, _peak_growth(device, start))
            except Exception as e:  # e.g. compilation fails on this machine: keep the others
                if rnd > 0:
                    raise
                row.skipped = _skip_reason(e)
                say(f"  {row.key}: skipped ({row.skipped})")
                continue
            finally:
                if comm is not None:
                    comm.current = None
            if rnd > 0:
                timed[row.key][0] += steps
                timed[row.key][1] += dt
            say(f"  round {rnd}{' (warm-up)' if rnd == 0 else ''} {row.key:34s} "
                f"{global_batch * steps / dt:10,.0f} samples/s")
    for row in rows:
        if row.key in timed:
            n, t = timed[row.key]
            row.samples_per_s = global_batch * n / t
            if comm is not None:
                row.comm = {k: v / n for k, v in comm.bytes[row.key].items()}
    agree, consistent, expected = {}, {}, {}
    if dist.is_distributed():
        comm.uninstall()
        for key, runner in runners.items():
            m = runner.method
            names = set(m.worker_consistent_buffers())
            agree[m.cfg.method.name] = agree.get(m.cfg.method.name, True) and buffers_agree(m)
            consistent[m.cfg.method.name] = sum(_nbytes(m.get_buffer(n)) for n in names)
            expected[m.cfg.method.name] = sum(_nbytes(b) for n, b in m.named_buffers() if n not in names)
    return rows, agree, consistent, expected


def _worker(rank: int, world: int, rendezvous: str, result_path: str, kwargs: dict) -> None:
    import torch.distributed as tdist

    device = torch.device(kwargs.pop("device"))
    if device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{rendezvous}",
                             rank=rank, world_size=world)
    try:
        say = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
        rows, agree, consistent, expected = measure(device=device, say=say, **kwargs)
        if rank == 0:
            Path(result_path).write_text(json.dumps({"rows": [asdict(r) for r in rows], "agree": agree,
                                                     "consistent": consistent, "expected": expected}))
    finally:
        tdist.destroy_process_group()


def bench_step(methods: list[str] | None = None, settings: list[str] | None = None, dataset: str = "cifar10",
               backbone: str = "", batch_size: int = 0, samples: int = 0, steps: int = 0, rounds: int = 0,
               device: str = "auto", workers: int = 1, overrides: list[str] | None = None,
               use_kornia: bool = True, out_file: str | os.PathLike = "BENCHMARKS.md",
               command: str | None = None, say=None) -> StepReport:
    from mpcl.data.datasets import DATASETS
    from mpcl.methods import METHODS

    say = say or (lambda *a: print(*a, flush=True))
    methods = methods or ["simclr"]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"--method {m}: unknown; known: {', '.join(sorted(METHODS))}")
    if dataset not in DATASETS:
        raise ValueError(f"--dataset {dataset}: unknown; known: {', '.join(sorted(DATASETS))}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible")
    d = CUDA_DEFAULTS if dev.type == "cuda" else CPU_DEFAULTS
    settings = settings or list(d.settings)
    for s in settings:
        if s not in SETTINGS:
            raise ValueError(f"--settings {s}: unknown; known: {', '.join(SETTINGS)}")
    backbone, batch_size = backbone or d.backbone, batch_size or d.batch_size
    steps, rounds = steps or d.steps, rounds or d.rounds
    samples = samples or d.samples
    if rounds < 2:
        raise ValueError(f"--rounds {rounds}: need at least 2 (the first is a warm-up)")
    if workers < 1 or batch_size % workers:
        raise ValueError(f"--workers {workers}: must be >= 1 and divide --batch-size {batch_size}")
    if dev.type == "cuda" and workers > torch.cuda.device_count():
        raise ValueError(f"--workers {workers}: only {torch.cuda.device_count()} GPU(s) visible (one per worker)")
    samples = max(samples, batch_size)
    say(f"bench step: {', '.join(methods)}; settings {', '.join(settings)}; {backbone}, batch {batch_size}, "
        f"{workers} worker(s) on {dev.type}; {rounds} rounds of {steps} steps (round 0 = warm-up)")
    kwargs = dict(methods=methods, settings=settings, dataset=dataset, backbone=backbone, batch_size=batch_size,
                  samples=samples, steps=steps, rounds=rounds, overrides=list(overrides or []),
                  use_kornia=use_kornia)
    load_before = os.getloadavg()
    if workers == 1:
        rows, agree, consistent, expected = measure(device=dev, say=say, **kwargs)
    else:
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            mp.start_processes(_worker, args=(workers, str(Path(tmp) / "rendezvous"), str(result),
                                              dict(kwargs, device=dev.type)),
                               nprocs=workers, start_method="spawn")
            data = json.loads(result.read_text())
        rows = [Row(**r) for r in data["rows"]]
        agree, consistent, expected = data["agree"], data["consistent"], data["expected"]
    load_after = os.getloadavg()
    report = StepReport(rows, dev.type, torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
                        workers, batch_size, backbone, _image_size(dataset), dataset, steps, rounds,
                        agree, consistent, expected)
    table = format_table(report)
    say(table)
    if out_file:
        from mpcl.bench import write_section

        command = command or "python " + " ".join(map(shlex.quote, sys.argv))
        start, end = section_markers(report, methods)
        write_section(Path(out_file), render_section(report, table, command, load_before, load_after, start, end),
                      start, end)
        say(f"wrote {out_file}")
    return report


def _cpu_name() -> str:
    from mpcl.bench import cpu_model

    return cpu_model()


def _image_size(dataset: str) -> int:
    from mpcl.data.datasets import get_dataset

    return get_dataset(dataset).image_size


# -- report -----------------------------------------------------------------------------------

def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def format_table(report: StepReport) -> str:
    """The markdown table of a run (what is printed and written into BENCHMARKS.md)."""
    peak = peak_bf16_flops(report.device_name) if report.device == "cuda" else None
    comm = report.workers > 1
    head = ["method", "setting", "samples/s", "x fp32 eager", "no-aug samples/s", "augmentation share",
            "peak memory", "model TFLOP/s", "MFU"]
    if comm:
        head += ["bytes/step: gradients", "DDP buffer broadcast", "method collectives"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * 2 + " ---: |" * (len(head) - 2)]
    for row in report.rows:
        if row.kind != "step":
            continue
        label = SETTINGS[row.setting].label
        if row.skipped:
            lines.append(f"| {row.method} | {label} | skipped: {row.skipped} |" + " |" * (len(head) - 3))
            continue
        model = report.row(f"{row.method}/{row.setting}/model")
        base = next((r for r in report.rows if r.key == f"{row.method}/fp32/step" and r.samples_per_s), None)
        ratio = f"{row.samples_per_s / base.samples_per_s:.2f}x" if base else "-"
        share = f"{1 - row.samples_per_s / model.samples_per_s:.0%}" if model.samples_per_s else "-"
        # FLOPs per step per worker x steps/s per worker
        achieved = row.flops_per_step * row.samples_per_s / report.batch_size
        mfu = f"{achieved / peak:.1%}" if peak and achieved else ("n/a" if report.device != "cuda" else "unknown GPU")
        cells = [row.method, label, f"{row.samples_per_s:,.0f}", ratio,
                 f"{model.samples_per_s:,.0f}" if model.samples_per_s else "-", share,
                 _mib(row.peak_bytes), f"{achieved / 1e12:.3g}" if achieved else "-", mfu]
        if comm:
            cells += [_bytes(row.comm.get(k, 0)) for k in ("gradients", "buffers", "method")]
        lines.append("| " + " | ".join(cells) + " |")
    aug = [r for r in report.rows if r.kind in ("augment", "kornia")]
    if aug:
        lines += ["", "| augmentation alone (two views of a uint8 batch) | samples/s | peak memory |",
                  "| --- | ---: | ---: |"]
        names = {"augment": "mpcl (SSLAugment, hand-written)", "kornia": "kornia.augmentation (per-sample parameters)"}
        for r in aug:
            if r.skipped:
                lines.append(f"| {names[r.kind]} | skipped: {r.skipped} | |")
            else:
                lines.append(f"| {names[r.kind]} | {r.samples_per_s:,.0f} | {_mib(r.peak_bytes)} |")
    return "\n".join(lines)


def augmentation_verdict(report: StepReport) -> str:
    rows = {r.kind: r for r in report.rows if r.kind in ("augment", "kornia")}
    ours, theirs = rows.get("augment"), rows.get("kornia")
    if not ours or not theirs or not ours.samples_per_s or not theirs.samples_per_s:
        return "kornia was not measured: no comparison."
    ratio = ours.samples_per_s / theirs.samples_per_s
    if ratio >= 1.1:
        return (f"On {report.device} mpcl's hand-written augmentation is {ratio:.1f}x kornia's: it is kept "
                f"on {report.device}.")
    return (f"On {report.device} mpcl's hand-written augmentation is {ratio:.2f}x kornia's (not measurably "
            "faster): kornia's pipeline is the candidate to replace it on this device.")


def section_markers(report: StepReport, methods: list[str]) -> tuple[str, str]:
    key = f"{report.device}:{','.join(methods)}:{report.workers}"
    return f"<!-- bench:step:{key}:start -->", f"<!-- bench:step:{key}:end -->"


def render_section(report: StepReport, table: str, command: str, load_before, load_after,
                   start: str, end: str) -> str:
    from mpcl.bench import versions
    from mpcl.data.process import available_cpus

    workers = f"{report.workers} workers (DDP, {'NCCL' if report.device == 'cuda' else 'gloo'})" \
        if report.workers > 1 else "1 process"
    memory = ("torch.cuda.max_memory_allocated above what was allocated before the timed steps"
              if report.device == "cuda" else
              "growth of the process's peak RSS (getrusage ru_maxrss) during the row's warm-up round; rows "
              "measured later reuse memory already held, so this under-counts them")
    lines = [
        start,
        f"## Training step on {report.device}: {report.device_name}, {workers}",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{command}`",
        f"- machine: {_cpu_name()}, {available_cpus()} cores available ({os.cpu_count()} online); load "
        f"average before/after: {load_before[0]:.2f} -> {load_after[0]:.2f}",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in versions("kornia").items()),
        f"- setup: {report.backbone}, {report.dataset} presets ({report.image_size} px), global batch "
        f"{report.batch_size} (two views each), synthetic uint8 images; {report.rounds - 1} timed round(s) of "
        f"{report.steps} steps per row after a warm-up round, rows alternating",
        f"- peak memory: {memory}",
        *(["- fp32 rows use torch's defaults: cuDNN may run fp32 convolutions in TF32"] if report.device == "cuda" else []),
        "- samples/s counts samples (two views each); `no-aug`: the same step on a fixed augmented batch; "
        "augmentation share: 1 - step / no-aug rate",
        "",
        table,
        "",
        augmentation_verdict(report),
    ]
    if report.device == "cuda" and peak_bf16_flops(report.device_name) is None:
        lines += ["", f"MFU omitted: no known bf16 peak for {report.device_name!r} (mpcl/bench_step.py "
                  "PEAK_BF16_FLOPS)."]
    if report.workers > 1:
        for m, ok in report.buffers_agree.items():
            sent = max((r.comm.get("buffers", 0) for r in report.rows if r.method == m and r.kind == "step"), default=0)
            others = report.broadcast_expected.get(m, 0)
            verdict = (f"DDP's per-step broadcast ({_bytes(sent)}) carries only the other buffers ({_bytes(others)})"
                       if sent <= others else
                       f"DDP's per-step broadcast ({_bytes(sent)}) is more than the other buffers ({_bytes(others)}): "
                       "banks or queues are being broadcast")
            lines += ["", f"{m}: worker-consistent buffers ({_bytes(report.consistent_bytes.get(m, 0))}: banks, "
                      f"queues) {'agree' if ok else 'DISAGREE'} on every worker after the run; {verdict}."]
    if load_before[0] > available_cpus():
        lines += ["", f"Note: the load average ({load_before[0]:.1f}) exceeded the {available_cpus()} cores: "
                  "other jobs shared the machine. Rows were timed alternately under the same conditions, but "
                  "absolute figures are below an idle machine's."]
    lines.append(end)
    return "\n".join(lines)
