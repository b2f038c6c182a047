"""``mpcl bench``: the benchmarks' command line (``mpcl.cli`` adds it as a subcommand)."""

from __future__ import annotations



class BenchError(ValueError):
    """A bad benchmark argument or input: one line, exit code 2 (printed by ``mpcl.cli.main``)."""
    exit_code = 2


def fail(message: str) -> None:
    raise BenchError(message)

def cmd_bench(args) -> None:
    import shlex

    if args.what == "step":
        return cmd_bench_step(args)
    # OpenMP's default wait policy is left alone: under PASSIVE every small colour op of the FFCV
    # pipeline wakes sleeping threads, under ACTIVE the reference's main thread spins while it decodes
    from mpcl.bench.loader import bench_loader
    from mpcl.data.process import keep_freed_memory
    from mpcl.data.sources import SourceError

    keep_freed_memory()  # freed batch buffers stay in the process: no page faults per batch

    dataset, batch_size = args.dataset or "fashion_mnist", args.batch_size or 512
    samples = 20_000 if args.samples is None else args.samples
    command = (f"python run.py bench loader --dataset {dataset} --workers {args.workers} "
               f"--batch-size {batch_size} --epochs {args.epochs} --samples {samples} "
               f"--device {args.device}" + (f" --data-dir {shlex.quote(args.data_dir)}" if args.data_dir else ""))
    try:
        bench_loader(dataset, args.workers, batch_size, args.epochs, samples,
                     args.device, args.data_dir, args.out_file, command=command)
    except (SourceError, FileNotFoundError, ValueError) as e:
        fail(str(e))


def cmd_bench_step(args) -> None:
    from mpcl.bench.step import bench_step
    from mpcl.config import ConfigError
    from mpcl.methods import METHODS

    methods = sorted(METHODS) if args.all else [m for m in args.method.split(",") if m]
    try:
        bench_step(methods, [s for s in args.settings.split(",") if s] if args.settings else None,
                   args.dataset or "cifar10", args.backbone, args.batch_size, args.samples or 0, args.steps,
                   args.rounds, args.device, args.workers or 1, args.overrides, not args.no_kornia, args.out_file)
    except (ConfigError, ValueError) as e:
        fail(str(e))


def add_bench(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks: loader (FFCV vs DataLoader), step (the training step)")
    b.add_argument("what", choices=["loader", "step"])
    b.add_argument("--dataset", help="loader: the dataset read (default fashion_mnist); step: whose presets, "
                   "image size and classes (default cifar10)")
    b.add_argument("--workers", type=int, default=0, help="loader: loader workers (0 = all cores); "
                   "step: DDP workers, spawned processes, gloo on CPU / NCCL on GPUs (0 = 1)")
    b.add_argument("--batch-size", type=int, default=0, help="global batch (default: loader 512; "
                   "step 512 on CUDA, 64 on CPU)")
    b.add_argument("--epochs", type=int, default=2, help="loader: passes per pipeline; the first is a warm-up")
    b.add_argument("--samples", type=int, default=None, help="loader: first N training samples (default "
                   "20,000; 0 = all); step: size of the synthetic dataset (bank length; default 50,000 on CUDA)")
    b.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    b.add_argument("--data-dir", default="", help="loader: folder of train.beton (default: the dataset's)")
    b.add_argument("--method", default="simclr", help="step: method(s), comma-separated")
    b.add_argument("--all", action="store_true", help="step: every method of the registry")
    b.add_argument("--settings", default="", help="step: comma-separated of fp32, bf16, bf16_cl, "
                   "bf16_cl_compile (default: all four on CUDA, fp32 on CPU)")
    b.add_argument("--backbone", default="", help="step: default resnet18 on CUDA, small_cnn on CPU")
    b.add_argument("--steps", type=int, default=0, help="step: steps per timed block (default 20 CUDA, 4 CPU)")
    b.add_argument("--rounds", type=int, default=0, help="step: rounds, the first a warm-up (default 4 CUDA, 3 CPU)")
    b.add_argument("--no-kornia", action="store_true", help="step: skip the kornia augmentation comparison")
    b.add_argument("--out-file", default="BENCHMARKS.md", help="markdown file to update ('' = none)")
    b.add_argument("--override", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="step: a config override (repeatable), e.g. --override model.projector_out=256")
    b.set_defaults(func=cmd_bench)
