"""``run.py bench loader``: samples/s to ready-to-train two-view batches on the training device.

Two pipelines over the same images (the first ``samples`` of the training split), the same
batch size and the same number of workers:

(a) mpcl's FFCV pipeline (``mpcl.data.ffcv_loader.FFCVTrainLoader``): crop + flip while
    decoding in FFCV, colour ops batched on the device (on CPU the jitter and grayscale run
    in ``mpcl.data.augment.colour_cpu``'s compiled kernel);
(b) the reference, the way the seed repositories feed SimCLR/SimSiam: a torch ``DataLoader``
    whose dataset returns two views of a PIL image, each through torchvision's
    RandomResizedCrop -> RandomHorizontalFlip -> RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1),
    p=0.8) -> RandomGrayscale(0.2) -> ToTensor, then the batch is moved to the device.

Each pipeline runs ``epochs`` passes; the first is a warm-up (numba JIT, worker start-up,
page cache) and is excluded; the rest are timed (on CUDA up to a synchronize).
Results are printed and written to the results folder (``record.Output``); ``--record`` also
writes their section into ``BENCHMARKS.md``.
"""

from __future__ import annotations

import datetime
import os
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep import prepare_if_missing
from mpcl.bench.options import LoaderBench
from mpcl.bench.record import Output, cpu_model, versions
from mpcl.data.betons import BetonReader, writer_name

SECTION_START = "<!-- bench:loader:start -->"
SECTION_END = "<!-- bench:loader:end -->"


@dataclass
class BenchResult:
    ffcv: float          # samples/s
    reference: float     # samples/s
    samples: int         # per timed epoch
    timed_epochs: int
    batch_size: int
    workers: int
    device: str
    dataset: str

    @property
    def ratio(self) -> float:
        return self.ffcv / self.reference if self.reference > 0 else float("inf")


# -- the reference pipeline -------------------------------------------------------------------

class TwoViewBeton(torch.utils.data.Dataset):
    """(view1, view2, label, index) from a .beton through per-sample PIL transforms."""

    def __init__(self, path: Path, n: int, size: int, crop_scale_min: float = 0.08):
        from torchvision import transforms as T

        self.reader = BetonReader(path)
        self.n = min(n, len(self.reader)) if n else len(self.reader)
        self.transform = T.Compose([
            T.RandomResizedCrop(size, scale=(crop_scale_min, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.ToTensor(),
        ])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from PIL import Image

        image, label, index = self.reader[i]
        pil = Image.fromarray(image)
        return self.transform(pil), self.transform(pil), label, index


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run_epoch, epoch: int, device: torch.device) -> tuple[int, float]:
    _sync(device)
    t0 = time.perf_counter()
    n = run_epoch(epoch)
    _sync(device)
    return n, time.perf_counter() - t0


def reference_epochs(path: Path, size: int, samples: int, batch_size: int, workers: int,
                     device: torch.device):
    """``run_epoch(e) -> samples`` for the reference DataLoader pipeline."""
    dataset = TwoViewBeton(path, samples, size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0))

    def run_epoch(_e: int) -> int:
        n = 0
        for v1, v2, label, index in loader:
            v1 = v1.to(device, non_blocking=True)
            v2 = v2.to(device, non_blocking=True)
            label, index = label.to(device, non_blocking=True), index.to(device, non_blocking=True)
            n += len(index)
        return n

    return run_epoch


def ffcv_epochs(path: Path, dataset: str, samples: int, batch_size: int, workers: int,
                device: torch.device):
    """``run_epoch(e) -> samples`` for mpcl's FFCV training loader."""
    from mpcl.config.compose import load
    from mpcl.data.datasets import get_dataset
    from mpcl.data.ffcv_loader import FFCVTrainLoader

    cfg = load(None, ["data.loader=ffcv", f"data.dataset={dataset}", f"data.batch_size={batch_size}",
                      f"data.num_workers={workers}"])
    indices = np.arange(samples, dtype=np.int64) if samples else None
    loader = FFCVTrainLoader(path, cfg, get_dataset(dataset), 0, 1, device, indices=indices,
                             num_workers=workers)

    def run_epoch(e: int) -> int:
        loader.set_epoch(e)
        n = 0
        for batch in loader:
            n += len(batch.index)
        return n

    return run_epoch


def run_interleaved(runners: dict, epochs: int, device: torch.device, say) -> dict[str, float]:
    """Warm every pipeline up with one epoch, then time the remaining epochs alternately (so a
    change in the machine's load hits both alike); returns samples/s per pipeline."""
    done = {name: [0, 0.0] for name in runners}
    for e in range(epochs):
        for name, run_epoch in runners.items():
            n, dt = _timed(run_epoch, e, device)
            if e > 0:
                done[name][0] += n
                done[name][1] += dt
            say(f"  {name:9s} epoch {e}{' (warm-up)' if e == 0 else '          '}: {n} samples in "
                f"{dt:6.1f} s = {n / dt:8,.0f} samples/s (load {os.getloadavg()[0]:.2f})")
    return {name: n / t for name, (n, t) in done.items()}


# -- report -----------------------------------------------------------------------------------

def render_section(result: BenchResult, command: str, load_before: tuple, load_after: tuple) -> str:
    from mpcl.data.process import available_cpus

    v = versions()
    gpu = ""
    if result.device.startswith("cuda"):
        gpu = f"; GPU: {torch.cuda.get_device_name(torch.device(result.device))}"
    return "\n".join([
        SECTION_START,
        "## Loader: FFCV vs torchvision DataLoader (two views per sample)",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{command}`",
        f"- machine: {cpu_model()}, {available_cpus()} cores available to the process "
        f"({os.cpu_count()} online){gpu}; load average before/after: "
        f"{'/'.join(f'{x:.2f}' for x in load_before)} -> {'/'.join(f'{x:.2f}' for x in load_after)}",
        "- libraries: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- threads: torch intra-op {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}",
        f"- setup: {result.dataset}, first {result.samples:,} training samples per epoch, batch "
        f"{result.batch_size}, {result.workers} workers, device {result.device}; "
        f"1 warm-up epoch each excluded, then {result.timed_epochs} timed epoch(s) of each, "
        "alternating",
        "",
        "| pipeline | samples/s | views/s |",
        "| --- | ---: | ---: |",
        f"| FFCV (crop + flip in FFCV; colour ops on {result.device}"
        f"{', jitter + grayscale in the compiled per-sample kernel' if result.device == 'cpu' else ', batched'})"
        f" | {result.ffcv:,.0f} | {2 * result.ffcv:,.0f} |",
        f"| reference: torchvision DataLoader, per-sample PIL transforms | {result.reference:,.0f}"
        f" | {2 * result.reference:,.0f} |",
        f"| **ratio FFCV / reference** | **{result.ratio:.1f}x** | |",
        "",
        "The reference is the seed repositories' pipeline: RandomResizedCrop(scale 0.08-1), "
        "RandomHorizontalFlip, RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8), "
        "RandomGrayscale(0.2), ToTensor, per sample on PIL images, twice.",
        *([""] + [f"Note: the load average ({load_before[0]:.1f}) exceeded the {available_cpus()} "
                  "cores, i.e. other jobs shared the machine; the pipelines were timed alternately "
                  "under the same conditions, but absolute numbers are below an idle machine's and "
                  "the ratio can differ from it."] if load_before[0] > available_cpus() else []),
        SECTION_END,
    ])


# -- entry point ------------------------------------------------------------------------------

def bench_loader(bench: LoaderBench, output: Output, command: str | None = None,
                 say=None) -> BenchResult:
    """Measure both pipelines, print the figures and write the report (``output``); ``command``
    is the command line recorded (default: ``mpcl bench loader`` with the resolved options)."""
    from mpcl.data.datasets import get_dataset

    say = say or (lambda *a: print(*a, flush=True))
    bench = bench.resolved()
    spec = get_dataset(bench.dataset)
    dev = torch.device(bench.device)
    root = Path(bench.data_dir or spec.beton_dir)
    if not all((root / name).is_file() for name in ("train.beton", "val.beton")):
        say(f"writing {root}/train.beton and val.beton from {spec.raw_path} (once)")
    prepare_if_missing(writer_name(spec), spec.raw_path, root, say)
    path = root / "train.beton"
    n_total = len(BetonReader(path))
    samples = min(bench.samples, n_total) if bench.samples else n_total
    batch_size, workers = bench.batch_size, bench.workers
    if samples < batch_size:
        raise ValueError(f"--samples {samples}: fewer than one batch of {batch_size}")
    load_before = os.getloadavg()
    say(f"bench loader: {bench.dataset}, {samples:,} samples, batch {batch_size}, {workers} workers, "
        f"device {dev}, {bench.epochs} epochs (first = warm-up); load average {load_before[0]:.2f}")
    runners = {"FFCV": ffcv_epochs(path, bench.dataset, samples, batch_size, workers, dev),
               "reference": reference_epochs(path, spec.image_size, samples, batch_size, workers, dev)}
    rates = run_interleaved(runners, bench.epochs, dev, say)
    load_after = os.getloadavg()
    result = BenchResult(rates["FFCV"], rates["reference"], samples // batch_size * batch_size, bench.epochs - 1,
                         batch_size, workers, str(dev), bench.dataset)
    say(f"FFCV:      {result.ffcv:10,.0f} samples/s ({2 * result.ffcv:,.0f} views/s)")
    say(f"reference: {result.reference:10,.0f} samples/s ({2 * result.reference:,.0f} views/s)")
    say(f"ratio:     {result.ratio:10.1f}x   (load average {load_before[0]:.2f} -> {load_after[0]:.2f})")
    command = command or "mpcl bench loader " + shlex.join(bench.options())
    data = {"command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            **asdict(result), "ratio": result.ratio if result.reference > 0 else None,
            "load_before": load_before, "load_after": load_after}
    output.write("loader", render_section(result, command, load_before, load_after), SECTION_START, SECTION_END,
                 data, say)
    return result
