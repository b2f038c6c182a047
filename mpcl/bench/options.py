"""Every benchmark's options: a frozen dataclass each (``LoaderBench``, ``StepBench``,
``GpuCheck``) holding the benchmark's defaults, the argparse options that fill it (``mpcl bench
loader | step | gpu-check``), and ``resolved()``, which turns the defaults that depend on the
machine (device, workers, the CUDA or CPU scale of the step) into values in one place.

Nothing heavy is imported here: building mpcl's parser imports this module."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from mpcl.bench.record import add_output_arguments, add_record_argument
from mpcl.bench.step_settings import CPU_DEFAULTS, CUDA_DEFAULTS, SETTINGS

DEFAULT_FMNIST = "/usr/share/datasets/fashion-mnist"


def _device(name: str) -> tuple[str, bool]:
    """``auto`` made concrete (CUDA when visible), and whether it is a CUDA device; a CUDA
    device that is not visible is a ``ValueError``."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = torch.device(name).type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible")
    return name, cuda


# -- bench loader -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LoaderBench:
    """What ``bench loader`` measures; ``resolved()`` fills in the machine's values."""
    dataset: str = "fashion_mnist"
    workers: int = 0            # loader workers of both pipelines; 0 = every core available
    batch_size: int = 512
    epochs: int = 2             # passes per pipeline, the first a warm-up
    samples: int = 20_000       # the first N training samples; 0 = all
    device: str = "auto"        # auto | cpu | cuda[:i]
    data_dir: str = ""          # folder of train.beton; "" = the dataset's

    @classmethod
    def from_args(cls, args) -> LoaderBench:
        return cls(args.dataset, args.workers, args.batch_size, args.epochs, args.samples, args.device,
                   args.data_dir)

    def resolved(self) -> LoaderBench:
        """The device and the worker count this machine gives; a bad value is a ``ValueError``
        naming its option."""
        from mpcl.data.datasets import DATASETS
        from mpcl.data.process import available_cpus

        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset {self.dataset}: unknown; known: {', '.join(sorted(DATASETS))}")
        if self.epochs < 2:
            raise ValueError(f"--epochs {self.epochs}: need at least 2 (the first is a warm-up)")
        if self.batch_size < 1 or self.workers < 0 or self.samples < 0:
            raise ValueError("--batch-size must be >= 1, --workers and --samples >= 0")
        device, _ = _device(self.device)
        return replace(self, device=device, workers=min(self.workers or available_cpus(), available_cpus()))

    def options(self) -> list[str]:
        """The command line options that repeat this benchmark."""
        return ["--dataset", self.dataset, "--workers", str(self.workers), "--batch-size", str(self.batch_size),
                "--epochs", str(self.epochs), "--samples", str(self.samples), "--device", self.device,
                *(["--data-dir", self.data_dir] if self.data_dir else [])]


def add_loader_arguments(p) -> None:
    """``bench loader``'s options, their defaults ``LoaderBench``'s."""
    d = LoaderBench
    p.add_argument("--dataset", default=d.dataset, help="the dataset read (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="loader workers of both pipelines "
                   "(default 0 = every core available)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes per pipeline, the first a warm-up "
                   "(default %(default)s)")
    p.add_argument("--samples", type=int, default=d.samples, help="the first N training samples "
                   "(default %(default)s; 0 = all)")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:i] (default %(default)s)")
    p.add_argument("--data-dir", default=d.data_dir, help="folder of train.beton and val.beton, written "
                   "from the raw files when missing (default: the dataset's, e.g. data/fmnist)")
    add_output_arguments(p)


# -- bench step -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepBench:
    """What ``bench step`` measures. ``None`` is the device's default (``CUDA_DEFAULTS`` or
    ``CPU_DEFAULTS``), filled in by ``resolved()``."""
    methods: tuple[str, ...] = ("simclr",)
    settings: tuple[str, ...] | None = None
    dataset: str = "cifar10"    # whose presets, image size and classes
    backbone: str | None = None
    batch_size: int | None = None    # global
    samples: int | None = None       # synthetic dataset size (at least one batch)
    steps: int | None = None
    rounds: int | None = None
    device: str = "auto"             # auto | cpu | cuda[:i]
    workers: int = 1                 # DDP workers (spawned processes) when > 1
    overrides: tuple[str, ...] = ()  # config overrides KEY=VALUE
    use_kornia: bool = True          # also time kornia's equivalent augmentation

    @classmethod
    def from_args(cls, args) -> StepBench:
        from mpcl.methods import METHODS

        methods = sorted(METHODS) if args.all else [m for m in args.method.split(",") if m]
        settings = [s for s in args.settings.split(",") if s] if args.settings else None
        return cls(tuple(methods), tuple(settings) if settings else None, args.dataset, args.backbone,
                   args.batch_size, args.samples, args.steps, args.rounds, args.device, args.workers,
                   tuple(args.overrides), not args.no_kornia)

    def resolved(self) -> StepBench:
        """The concrete device and every default of that device filled in; a bad value is a
        ``ValueError`` naming its option."""
        import torch

        from mpcl.data.datasets import DATASETS
        from mpcl.methods import METHODS

        if not self.methods:
            raise ValueError("--method: no method given")
        for m in self.methods:
            if m not in METHODS:
                raise ValueError(f"--method {m}: unknown; known: {', '.join(sorted(METHODS))}")
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset {self.dataset}: unknown; known: {', '.join(sorted(DATASETS))}")
        device, cuda = _device(self.device)
        d = CUDA_DEFAULTS if cuda else CPU_DEFAULTS
        settings = tuple(self.settings or d.settings)
        for s in settings:
            if s not in SETTINGS:
                raise ValueError(f"--settings {s}: unknown; known: {', '.join(SETTINGS)}")
        b = replace(self, methods=tuple(self.methods), settings=settings, device=device,
                    backbone=self.backbone or d.backbone, batch_size=self.batch_size or d.batch_size,
                    steps=self.steps or d.steps, rounds=self.rounds or d.rounds, overrides=tuple(self.overrides))
        b = replace(b, samples=max(self.samples or d.samples, b.batch_size))
        if b.rounds < 2:
            raise ValueError(f"--rounds {b.rounds}: need at least 2 (the first is a warm-up)")
        if b.workers < 1 or b.batch_size % b.workers:
            raise ValueError(f"--workers {b.workers}: must be >= 1 and divide --batch-size {b.batch_size}")
        if cuda and b.workers > torch.cuda.device_count():
            raise ValueError(f"--workers {b.workers}: only {torch.cuda.device_count()} GPU(s) visible "
                             "(one per worker)")
        return b

    def options(self) -> list[str]:
        """The command line options that repeat this benchmark (of a resolved one: every value)."""
        values = [("--method", ",".join(self.methods)), ("--settings", ",".join(self.settings or ())),
                  ("--dataset", self.dataset), ("--backbone", self.backbone), ("--batch-size", self.batch_size),
                  ("--samples", self.samples), ("--steps", self.steps), ("--rounds", self.rounds),
                  ("--device", self.device), ("--workers", self.workers)]
        out = [x for k, v in values if v not in (None, "") for x in (k, str(v))]
        out += [x for o in self.overrides for x in ("--override", o)]
        return out + ([] if self.use_kornia else ["--no-kornia"])


def add_step_arguments(p) -> None:
    """``bench step``'s options, their defaults ``StepBench``'s and the devices'."""
    c, g = CUDA_DEFAULTS, CPU_DEFAULTS
    p.add_argument("--method", default=StepBench.methods[0], help="method(s), comma-separated (default %(default)s)")
    p.add_argument("--all", action="store_true", help="every method of the registry")
    p.add_argument("--settings", default=None, help=f"comma-separated of {', '.join(SETTINGS)} "
                   f"(default: {','.join(c.settings)} on CUDA, {','.join(g.settings)} on CPU)")
    p.add_argument("--dataset", default=StepBench.dataset, help="whose presets, image size and classes "
                   "(default %(default)s)")
    p.add_argument("--backbone", default=None, help=f"default {c.backbone} on CUDA, {g.backbone} on CPU")
    p.add_argument("--batch-size", type=int, default=None, help=f"global batch (default {c.batch_size} on CUDA, "
                   f"{g.batch_size} on CPU)")
    p.add_argument("--samples", type=int, default=None, help="size of the synthetic dataset, the length of memory "
                   f"banks (default {c.samples:,} on CUDA, {g.samples:,} on CPU)")
    p.add_argument("--steps", type=int, default=None, help=f"steps per timed block (default {c.steps} on CUDA, "
                   f"{g.steps} on CPU)")
    p.add_argument("--rounds", type=int, default=None, help=f"rounds of blocks, the first a warm-up (default "
                   f"{c.rounds} on CUDA, {g.rounds} on CPU)")
    p.add_argument("--device", default=StepBench.device, help="auto | cpu | cuda[:i] (default %(default)s)")
    p.add_argument("--workers", type=int, default=StepBench.workers, help="DDP workers: spawned processes in one "
                   "process group, gloo on CPU, NCCL on GPUs (one each) (default %(default)s)")
    p.add_argument("--no-kornia", action="store_true", help="skip the comparison with kornia's augmentation")
    p.add_argument("--override", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="a config override (repeatable), e.g. --override model.projector_out=256")
    add_output_arguments(p)


# -- bench gpu-check --------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuCheck:
    """What the GPU check (``gpu_check.run``) runs."""
    data: str = field(default_factory=lambda: os.environ.get("MPCL_FMNIST", DEFAULT_FMNIST))  # the idx files
    device: str = "cuda"          # cuda (the check) | cpu (a toy-scale dry run)
    quick: bool = False           # toy scale: small model, 256 samples
    out: str = "runs/gpu_check"   # the epochs' run directories; bench step's results in OUT/bench
    record: str | None = None     # also write bench step's sections into this markdown file
    skip: frozenset[str] = frozenset()   # of checks, epochs, bench

    @classmethod
    def from_args(cls, args) -> GpuCheck:
        return cls(args.data, args.device, args.quick, args.out, args.record,
                   frozenset(filter(None, args.skip.split(","))))


def add_gpu_check_arguments(p) -> None:
    """The GPU check's options, their defaults ``GpuCheck``'s."""
    p.add_argument("--data", default=GpuCheck().data, help="folder of the four Fashion-MNIST idx files "
                   f"(default: $MPCL_FMNIST, else {DEFAULT_FMNIST})")
    p.add_argument("--device", default=GpuCheck.device, help="cuda (the check) | cpu (a toy-scale dry run)")
    p.add_argument("--quick", action="store_true", help="toy scale: small model, 256 samples (CI)")
    p.add_argument("--out", default=GpuCheck.out, metavar="DIR", help="the epochs' run directories; bench "
                   "step's results in DIR/bench (default %(default)s)")
    add_record_argument(p)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: checks, epochs, bench")


# -- bench sweep ------------------------------------------------------------------------------

# 4 x 3 x 3 seeds: one configuration of sweeps/fmnist_demo.yaml (4 epochs, 3072 samples) trains
# in 94 s on the 2-core development machine, so its 12 configurations x 3 seeds take about an hour.
SWEEP_GRID = (4, 3)


@dataclass(frozen=True)
class SweepBench:
    """What ``bench sweep`` builds and replays."""
    sweep: str
    table: str = ""                   # "" = runs/bench/sweep/<sweep name>/table.jsonl
    grid: tuple[int, ...] = SWEEP_GRID  # values per searched range, the last repeating
    seeds: int = 3                    # training seeds per configuration
    search_seeds: int = 20
    num_samples: int | None = None    # trials per replayed sweep; None = the file's
    budget: int | None = None         # trial-epochs after which no trial starts
    overrides: tuple[str, ...] = ()   # the sweep file's command-line overrides
    record: str | None = None

    @classmethod
    def from_args(cls, args) -> SweepBench:
        return cls(args.sweep, args.table, tuple(args.grid), args.seeds, args.search_seeds, args.num_samples,
                   args.budget, tuple(args.overrides), args.record)

    def check(self) -> None:
        """A bad value is a ``ValueError`` naming its option."""
        for option, value, least in (("--seeds", self.seeds, 1), ("--search-seeds", self.search_seeds, 20),
                                     ("--num-samples", self.num_samples, 1), ("--budget", self.budget, 1)):
            if value is not None and value < least:
                raise ValueError(f"{option} {value}: must be >= {least}")

    def options(self) -> list[str]:
        values = [("--table", self.table), ("--seeds", self.seeds), ("--search-seeds", self.search_seeds),
                  ("--num-samples", self.num_samples), ("--budget", self.budget)]
        out = [self.sweep, "--grid", *map(str, self.grid)]
        out += [x for k, v in values if v not in (None, "") for x in (k, str(v))]
        return out + [x for o in self.overrides for x in ("--override", o)]


def add_sweep_arguments(p) -> None:
    """``bench sweep``'s options, their defaults ``SweepBench``'s."""
    d = SweepBench
    p.add_argument("sweep", metavar="SWEEP", help="the sweep file (a path, or a shipped one's name: fmnist_demo)")
    p.add_argument("--table", default=d.table, metavar="PATH", help="the learning-curve table, reused and "
                   "extended (default runs/bench/sweep/<sweep name>/table.jsonl)")
    p.add_argument("--grid", type=int, nargs="+", default=list(d.grid), metavar="N",
                   help="grid values per searched range in the space's order, the last repeating "
                   "(log-spaced for loguniform; choices take all their values) (default %(default)s)")
    p.add_argument("--seeds", type=int, default=d.seeds, help="training seeds per configuration (default %(default)s)")
    p.add_argument("--search-seeds", type=int, default=d.search_seeds, help="replays per strategy, each on its "
                   "own sampler seed (default %(default)s, at least 20)")
    p.add_argument("--num-samples", type=int, default=None, help="trials per replayed sweep (default: the file's)")
    p.add_argument("--budget", type=int, default=None, help="trial-epochs after which a replayed sweep starts no "
                   "more trials (default: none)")
    p.add_argument("--override", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="an override of the sweep file as on run.py sweep's command line (repeatable), "
                   "e.g. --override data.path=/path/to/fashion-mnist")
    add_record_argument(p)
