"""``mpcl bench step``: samples/s of a method's whole training step, setting against setting.

One step is what ``engine.loop.fit`` does per batch: the on-device augmentation of a uint8
batch into two views (``TensorTrainLoader``), then ``engine.loop.optimizer_step`` (forward
and loss under autocast, backward, optimizer step, the method's post-step update). Every
setting is built by the engine's own ``build`` / ``runtime`` / ``distributed_step`` from a
config, so the figures are those of ``mpcl train`` with ``train.precision``,
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

import datetime
import gc
import json
import os
import shlex
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from mpcl.bench.record import Output, cpu_model
from mpcl.bench.step_measure import measure
from mpcl.bench.step_report import format_table, render_section, section_markers
from mpcl.bench.options import StepBench
from mpcl.bench.step_settings import Row, StepReport


def bench_step(bench: StepBench, output: Output, command: str | None = None,
               say=None) -> StepReport:
    """Measure, print the table and write the report (``output``); ``command`` is the command
    line recorded (default: ``mpcl bench step`` with the resolved options)."""
    say = say or (lambda *a: print(*a, flush=True))
    bench = bench.resolved()
    dev = torch.device(bench.device)
    say(f"bench step: {', '.join(bench.methods)}; settings {', '.join(bench.settings)}; {bench.backbone}, "
        f"batch {bench.batch_size}, {bench.workers} worker(s) on {dev.type}; {bench.rounds} rounds of "
        f"{bench.steps} steps (round 0 = warm-up)")
    load_before = os.getloadavg()
    rows, agree, consistent, expected = _run(bench, say)
    load_after = os.getloadavg()
    report = StepReport(rows, dev.type, torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
                        bench.workers, bench.batch_size, bench.backbone, _image_size(bench.dataset), bench.dataset,
                        bench.steps, bench.rounds, agree, consistent, expected)
    table = format_table(report)
    say(table)
    command = command or "mpcl bench step " + shlex.join(bench.options())
    start, end = section_markers(report, list(bench.methods))
    data = {"command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_before": load_before, "load_after": load_after, **asdict(report)}
    output.write("step", render_section(report, table, command, load_before, load_after, start, end), start, end,
                 data, say)
    return report


def _run(bench: StepBench, say) -> tuple[list[Row], dict, dict, dict]:
    """``measure`` here, or in ``bench.workers`` spawned processes of one process group (rank
    0's result comes back through a file)."""
    if bench.workers == 1:
        return measure(bench, torch.device(bench.device), say)
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        mp.start_processes(_worker, args=(bench.workers, str(Path(tmp) / "rendezvous"), str(result), bench),
                           nprocs=bench.workers, start_method="spawn")
        data = json.loads(result.read_text())
    return [Row(**r) for r in data["rows"]], data["agree"], data["consistent"], data["expected"]


def _worker(rank: int, world: int, rendezvous: str, result_path: str, bench: StepBench) -> None:
    import torch.distributed as tdist

    device = torch.device(bench.device)
    if device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{rendezvous}",
                             rank=rank, world_size=world)
    try:
        say = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
        rows, agree, consistent, expected = measure(bench, device, say)
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
