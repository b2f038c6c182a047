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

import gc
import json
import os
import shlex
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from mpcl.bench.record import cpu_model, write_section
from mpcl.bench.step_measure import measure
from mpcl.bench.step_report import format_table, render_section, section_markers
from mpcl.bench.step_settings import CPU_DEFAULTS, CUDA_DEFAULTS, SETTINGS, Row, StepReport


def bench_step(methods: list[str] | None = None, settings: list[str] | None = None, dataset: str = "cifar10",
               backbone: str = "", batch_size: int = 0, samples: int = 0, steps: int = 0, rounds: int = 0,
               device: str = "auto", workers: int = 1, overrides: list[str] | None = None,
               use_kornia: bool = True, out_file: str | os.PathLike = "BENCHMARKS.md",
               command: str | None = None, say=None) -> StepReport:
    """Measure, print the table and (``out_file``) write its section of BENCHMARKS.md."""
    say = say or (lambda *a: print(*a, flush=True))
    methods = methods or ["simclr"]
    dev, kwargs = _resolve(methods, settings, dataset, backbone, batch_size, samples, steps, rounds, device,
                           workers, overrides, use_kornia)
    say(f"bench step: {', '.join(methods)}; settings {', '.join(kwargs['settings'])}; {kwargs['backbone']}, "
        f"batch {kwargs['batch_size']}, {workers} worker(s) on {dev.type}; {kwargs['rounds']} rounds of "
        f"{kwargs['steps']} steps (round 0 = warm-up)")
    load_before = os.getloadavg()
    rows, agree, consistent, expected = _run(dev, workers, kwargs, say)
    load_after = os.getloadavg()
    report = StepReport(rows, dev.type, torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
                        workers, kwargs["batch_size"], kwargs["backbone"], _image_size(dataset), dataset,
                        kwargs["steps"], kwargs["rounds"], agree, consistent, expected)
    table = format_table(report)
    say(table)
    if out_file:
        command = command or "python " + " ".join(map(shlex.quote, sys.argv))
        start, end = section_markers(report, methods)
        write_section(Path(out_file), render_section(report, table, command, load_before, load_after, start, end),
                      start, end)
        say(f"wrote {out_file}")
    return report


def _resolve(methods, settings, dataset, backbone, batch_size, samples, steps, rounds, device, workers,
             overrides, use_kornia) -> tuple[torch.device, dict]:
    """The device and ``measure``'s arguments, the device's defaults filled in; a bad
    argument is a ``ValueError`` naming its option."""
    from mpcl.data.datasets import DATASETS
    from mpcl.methods import METHODS

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
    return dev, dict(methods=methods, settings=settings, dataset=dataset, backbone=backbone, batch_size=batch_size,
                     samples=max(samples, batch_size), steps=steps, rounds=rounds, overrides=list(overrides or []),
                     use_kornia=use_kornia)


def _run(dev: torch.device, workers: int, kwargs: dict, say) -> tuple[list[Row], dict, dict, dict]:
    """``measure`` here, or in ``workers`` spawned processes of one process group (rank 0's
    result comes back through a file)."""
    if workers == 1:
        return measure(device=dev, say=say, **kwargs)
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        mp.start_processes(_worker, args=(workers, str(Path(tmp) / "rendezvous"), str(result),
                                          dict(kwargs, device=dev.type)),
                           nprocs=workers, start_method="spawn")
        data = json.loads(result.read_text())
    return [Row(**r) for r in data["rows"]], data["agree"], data["consistent"], data["expected"]


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
        # the DDP wrappers die here, then every rank waits for the others: a rank that tears the
        # group down while another's gloo threads still talk to it aborts the process
        gc.collect()
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


def _image_size(dataset: str) -> int:
    from mpcl.data.datasets import get_dataset

    return get_dataset(dataset).image_size
