"""The interleaved measurement of ``mpcl bench step`` in one process (the only one, or one
worker of a process group): every row's block of steps is timed in rounds, alternately, round 0
a warm-up, so a change in the machine's load hits every setting alike."""

from __future__ import annotations

import resource
import time
from collections import defaultdict
from collections.abc import Callable

import torch

from mpcl.bench.step_runner import CommCounter, StepRunner, buffers_agree, kornia_augment, method_config, nbytes
from mpcl.bench.options import StepBench
from mpcl.bench.step_settings import SETTINGS, Row

Block = tuple[Row, Callable[[], object]]   # (row, one step of it)


def measure(bench: StepBench, device: torch.device, say) -> tuple[list[Row], dict, dict, dict]:
    """Rows of every (method, setting) of ``bench`` (resolved) and of the augmentation alone,
    timed on ``device``; under DDP also the worker-consistent buffers' agreement and sizes
    (method -> value dicts, else empty)."""
    from mpcl import distributed as dist

    images, labels = _synthetic_data(bench.dataset, bench.samples)
    comm = None
    if dist.is_distributed():
        comm = CommCounter()
        comm.install()
    rows, blocks, runners = _step_rows(bench.methods, bench.settings, bench.dataset, bench.backbone,
                                       bench.batch_size, device, list(bench.overrides), images, labels, comm, say)
    first = next(iter(runners.values()), None)
    if first is not None:
        _augment_rows(bench.methods[0], first, images, device, bench.use_kornia, rows, blocks)
    _count_flops(bench.methods, runners, rows)
    local_batch = first.loader.local_batch if first is not None else bench.batch_size
    global_batch = local_batch * dist.world_size()
    _time_rounds(blocks, bench.rounds, bench.steps, global_batch, device, comm, say)
    agree, consistent, expected = {}, {}, {}
    if dist.is_distributed():
        comm.uninstall()
        agree, consistent, expected = _buffer_summary(runners)
    return rows, agree, consistent, expected


def _synthetic_data(dataset: str, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded uint8 images of the dataset's size and random labels of its classes."""
    from mpcl.data.datasets import get_dataset

    spec = get_dataset(dataset)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (samples, 3, spec.image_size, spec.image_size), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, spec.num_classes, (samples,), generator=gen)
    return images, labels


def _step_rows(methods, settings, dataset, backbone, batch_size, device, overrides, images, labels, comm,
               say) -> tuple[list[Row], list[Block], dict[str, StepRunner]]:
    """A step row and a no-augmentation row per (method, setting); a setting that cannot be
    built here is a skipped row with the reason, not an error."""
    rows: list[Row] = []
    blocks: list[Block] = []
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
    return rows, blocks, runners


def _augment_rows(method: str, first: StepRunner, images: torch.Tensor, device: torch.device,
                  use_kornia: bool, rows: list[Row], blocks: list[Block]) -> None:
    """The augmentation alone: mpcl's (the first runner's loader) and kornia's equivalent."""
    aug_row = Row(f"{method}/augment", method, "augment")
    rows.append(aug_row)
    blocks.append((aug_row, first.next_batch))
    k_row = Row(f"{method}/kornia", method, "kornia")
    rows.append(k_row)
    if not use_kornia:
        k_row.skipped = "not asked for (--no-kornia)"
        return
    try:
        k_aug = kornia_augment(first.cfg).to(device)
    except ImportError as e:
        k_row.skipped = f"kornia is not installed ({e})"
        return
    x_u8 = images[:first.loader.local_batch].to(device)

    def kornia_views():
        x = x_u8.float().div_(255)
        return k_aug(x), k_aug(x)

    blocks.append((k_row, kornia_views))


def _count_flops(methods: list[str], runners: dict[str, StepRunner], rows: list[Row]) -> None:
    """FLOPs per step: one eager step per method (the same count for every setting)."""
    for method in methods:
        eager = next((r for key, r in runners.items() if key.startswith(f"{method}/") and not r.cfg.train.compile),
                     None)
        if eager is not None:
            flops = eager.count_flops()
            for row in rows:
                if row.method == method and row.kind in ("step", "model"):
                    row.flops_per_step = flops


def _time_rounds(blocks: list[Block], rounds: int, steps: int, global_batch: int, device: torch.device,
                 comm: CommCounter | None, say) -> None:
    """Time ``steps`` steps of every block per round, alternately; fills each row's samples/s,
    peak memory and (under DDP) bytes per step. A block that fails in the warm-up round is
    skipped with the reason (e.g. compilation fails on this machine); later, it is an error."""
    timed: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for rnd in range(rounds):
        for row, one in list(blocks):
            if row.skipped:
                continue
            if comm is not None:
                comm.current = row.key if rnd > 0 else None
            try:
                dt = _time_block(row, one, steps, device, record_peak=rnd == 0 or device.type == "cuda")
            except Exception as e:
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
    for row, _ in blocks:
        if row.key in timed:
            n, t = timed[row.key]
            row.samples_per_s = global_batch * n / t
            if comm is not None:
                row.comm = {k: v / n for k, v in comm.bytes[row.key].items()}


def _time_block(row: Row, one: Callable[[], object], steps: int, device: torch.device, record_peak: bool) -> float:
    """Seconds of ``steps`` calls of ``one``, synchronised; records the row's peak memory."""
    _sync(device)
    start = _peak_start(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    _sync(device)
    dt = time.perf_counter() - t0
    if record_peak:
        row.peak_bytes = max(row.peak_bytes, _peak_growth(device, start))
    return dt


def _buffer_summary(runners: dict[str, StepRunner]) -> tuple[dict, dict, dict]:
    """Per method: whether its worker-consistent buffers agree on every worker, their bytes,
    and the bytes of the other buffers (what DDP's broadcast should carry)."""
    agree, consistent, expected = {}, {}, {}
    for runner in runners.values():
        m = runner.method
        names = set(m.worker_consistent_buffers())
        agree[m.params.name] = agree.get(m.params.name, True) and buffers_agree(m)
        consistent[m.params.name] = sum(nbytes(m.get_buffer(n)) for n in names)
        expected[m.params.name] = sum(nbytes(b) for n, b in m.named_buffers() if n not in names)
    return agree, consistent, expected


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
