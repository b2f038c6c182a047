"""``mpcl bench loader | step | gpu-check | sweep``: the benchmarks' command line (``mpcl.cli`` adds
``bench`` to its parser). Each subcommand's options and defaults are its benchmark's
(``mpcl.bench.options``); results go to ``--out`` (default ``runs/bench``), and the tracked
``BENCHMARKS.md`` changes only with ``--record``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


class BenchError(ValueError):
    """A bad benchmark argument or input: one line, exit code 2 (printed by ``mpcl.cli.main``)."""
    exit_code = 2


def fail(message: str) -> None:
    raise BenchError(message)


def program() -> str:
    """How mpcl was called, for the command a report records: ``python run.py``, ``python -m
    mpcl`` or ``mpcl`` (as ``mpcl.cli.program``, which this layer below it does not import)."""
    name = Path(sys.argv[0]).name
    return {"run.py": "python run.py", "__main__.py": "python -m mpcl"}.get(name, "mpcl")


def cmd_loader(args) -> None:
    # OpenMP's default wait policy is left alone: under PASSIVE every small colour op of the FFCV
    # pipeline wakes sleeping threads, under ACTIVE the reference's main thread spins while it decodes
    from mpcl.bench.loader import bench_loader
    from mpcl.bench.options import LoaderBench
    from mpcl.bench.record import Output
    from mpcl.data.process import keep_freed_memory
    from mpcl.data.sources import SourceError

    keep_freed_memory()  # freed batch buffers stay in the process: no page faults per batch
    try:
        bench = LoaderBench.from_args(args).resolved()
        bench_loader(bench, Output.from_args(args), f"{program()} bench loader {shlex.join(bench.options())}")
    except (SourceError, FileNotFoundError, ValueError) as e:
        fail(str(e))


def cmd_step(args) -> None:
    from mpcl.bench.options import StepBench
    from mpcl.bench.record import Output
    from mpcl.bench.step import bench_step
    from mpcl.config import ConfigError

    try:
        bench = StepBench.from_args(args).resolved()
        bench_step(bench, Output.from_args(args), f"{program()} bench step {shlex.join(bench.options())}")
    except (ConfigError, ValueError) as e:
        fail(str(e))


def cmd_gpu_check(args) -> None:
    from mpcl.bench.gpu_check import run
    from mpcl.bench.options import GpuCheck

    try:
        code = run(GpuCheck.from_args(args), f"{program()} bench gpu-check")
    except ValueError as e:
        fail(str(e))
    if code:
        raise SystemExit(code)   # a check, an epoch or a bench failed: the table says which


def cmd_sweep(args) -> None:
    from mpcl.bench.options import SweepBench
    from mpcl.bench.sweep import bench_sweep
    from mpcl.launch import LaunchError

    try:
        bench = SweepBench.from_args(args)
        bench_sweep(bench, f"{program()} bench sweep {shlex.join(bench.options())}")
    except (LaunchError, ValueError) as e:
        fail(str(e))


def add_bench(sub) -> None:
    from mpcl.bench.options import (add_gpu_check_arguments, add_loader_arguments, add_step_arguments,
                                    add_sweep_arguments)

    b = sub.add_parser("bench", help="benchmarks: loader (FFCV vs DataLoader), step (the training step), "
                       "gpu-check (the whole CUDA check), sweep (search strategies on a learning-curve table)",
                       description="The benchmarks. Results go to --out (default runs/bench); the tracked "
                       "BENCHMARKS.md changes only with --record.")
    which = b.add_subparsers(dest="bench", required=True, metavar="{loader,step,gpu-check,sweep}")
    for name, add, run, text in (
            ("loader", add_loader_arguments, cmd_loader,
             "samples/s of mpcl's FFCV training loader against a torchvision DataLoader, two views per sample"),
            ("step", add_step_arguments, cmd_step,
             "samples/s, memory and MFU of a method's whole training step over precision settings"),
            ("gpu-check", add_gpu_check_arguments, cmd_gpu_check,
             "everything a new CUDA machine must pass (checks, one epoch per paper method, bench step), "
             "ending in one table (scripts/gpu_check.sh)"),
            ("sweep", add_sweep_arguments, cmd_sweep,
             "search strategies (random, TPE, with and without ASHA) replayed on a sweep file's learning-curve "
             "table, trained here")):
        p = which.add_parser(name, help=text, description=text)
        add(p)
        p.set_defaults(func=run)
