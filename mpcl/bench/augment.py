"""``python -m mpcl.bench.augment``: samples/s of ``SSLAugment`` alone (one view of a uint8
batch per call) at the three image sizes mpcl trains on, with and without the crop."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mpcl.data.augment import SSLAugment
from mpcl.data.process import keep_freed_memory

# (image size, batch, crop, blur probability): the CIFAR, STL-10 and ImageNet recipes
CASES = [(32, 512, False, 0.0), (32, 512, True, 0.0), (96, 128, False, 0.5), (96, 128, True, 0.5),
         (224, 128, False, 0.5), (224, 128, True, 0.5)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="SSLAugment throughput (uint8 input, one view per call)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--no-malloc-tune", action="store_true", help="leave glibc malloc as is")
    ap.add_argument("--only", type=int, default=None, help="only this image size")
    return ap.parse_args(argv)


def time_case(aug: SSLAugment, x: torch.Tensor, reps: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``reps`` calls after two warm-up calls."""
    dev = x.device
    g = torch.Generator(device=dev).manual_seed(0)
    for _ in range(2):
        aug(x, g)
    times, cpu = [], []
    for _ in range(reps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        aug(x, g)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return times, cpu


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    if not a.no_malloc_tune and a.device == "cpu":
        print("keep_freed_memory:", keep_freed_memory())
    dev = torch.device(a.device)
    print(f"torch {torch.__version__}, {a.threads} threads, device {dev}; "
          "recipe: jitter (0.4,0.4,0.4,0.1) p=0.8, gray p=0.2")
    for size, B, crop, blur in CASES:
        if a.only is not None and size != a.only:
            continue
        aug = SSLAugment(size, crop=crop, blur_prob=blur, block_size=a.block_size)
        x = torch.randint(0, 256, (B, 3, size, size), dtype=torch.uint8, device=dev)
        times, cpu = time_case(aug, x, a.reps)
        best, med = min(times), statistics.median(times)
        print(
            f"size={size:3d} batch={B:3d} crop={crop!s:5} blur_p={blur}: "
            f"median {B / med:9.0f} samples/s ({med * 1e3:6.1f} ms/batch), best {B / best:9.0f} samples/s, "
            f"per CPU-second {B / statistics.median(cpu):9.0f}"
        )


if __name__ == "__main__":
    main()
