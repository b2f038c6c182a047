"""``prepare``: one raw dataset -> ``train.beton``, ``val.beton`` [, ``unlabeled.beton``] and
``manifest.json`` in an output folder.

Each dataset has a planner that reads its official layout through ``mpcl.data.sources`` and
returns the splits to write; :func:`prepare` then writes them all with the one generic
writer (``data_prep.beton.write_beton``), computes the statistics and the checksums and
writes the manifest. Outputs are written under temporary names and renamed only when every
one is complete, the manifest last: a folder whose ``manifest.json`` exists is complete.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_prep.beton import WriteError, sha256_file, show_progress, write_beton
from mpcl.data.betons import FIELDS
from mpcl.data.process import available_cpus
from mpcl.data.sources import (FASHION_MNIST_CLASSES, IMAGE_FOLDER_LAYOUT,
                               BadImageError, SourceError, cifar_classes, fashion_mnist_present,
                               gray_to_rgb_padded, list_image_folder, load_rgb, read_cifar,
                               read_fashion_mnist, read_stl10, stl10_classes)

DEFAULT_MAX_RESOLUTION = 400   # imagefolder: longer side, as ffcv-imagenet's *_400_* files
DEFAULT_JPEG_QUALITY = 90
SPLIT_FILES = {"train": "train.beton", "val": "val.beton", "unlabeled": "unlabeled.beton"}


LAYOUTS = {
    "fashion_mnist": ("a folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                      "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"),
    "cifar10": ("cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta), "
                "cifar-10-python.tar.gz (read in place), or a folder holding either"),
    "cifar100": ("cifar-100-python/ (train, test, meta; fine labels), cifar-100-python.tar.gz, "
                 "or a folder holding either"),
    "stl10": ("stl10_binary/ (train_X.bin, train_y.bin, test_X.bin, test_y.bin "
              "[, unlabeled_X.bin] [, class_names.txt]) or its parent"),
    "imagefolder": IMAGE_FOLDER_LAYOUT,
}


class OptionError(ValueError):
    """An argument of :func:`prepare` is not allowed (one-line message)."""


# --------------------------------------------------------------------------------------
# What a planner returns
# --------------------------------------------------------------------------------------

class ArrayDataset:
    """Samples from an (N, H, W, 3) uint8 array (or memmap view) and N labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), int(i)


class FileDataset:
    """Samples decoded from image files already checked by a first pass."""

    def __init__(self, paths: list[Path], labels: list[int]):
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image, _ = load_rgb(self.paths[i])
        return np.asarray(image), int(self.labels[i]), int(i)


@dataclass
class Split:
    name: str                       # train | val | unlabeled
    dataset: object                 # len() and [i] -> (image, label, index)
    hist: np.ndarray | None = None  # (3, 256) pixel counts of what is written (train only)
    max_sample_bytes: int = 0       # largest raw image, for ffcv's page size


@dataclass
class Plan:
    splits: list[Split]
    classes: list[str]
    image_size: int | None          # side of every image, None when sizes vary
    write_mode: str = "raw"
    skipped: list[dict] = field(default_factory=list)      # inputs not stored, with reasons
    converted: list[dict] = field(default_factory=list)    # stored after a mode conversion
    rescaled: list[dict] = field(default_factory=list)     # 16-bit sources stored as 8-bit
    empty_classes: list[dict] = field(default_factory=list)  # class folders with no image


def pixel_histogram(images: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(3, 256) int64 counts of each value in each channel of (N, H, W, 3) uint8 images."""
    hist = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk])
        for c in range(3):
            hist[c] += np.bincount(block[..., c].ravel(), minlength=256)
    return hist


def mean_std(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std in [0, 1] from a pixel histogram."""
    values = np.arange(256, dtype=np.int64)
    n = hist.sum(axis=1).astype(np.float64)
    mean = (hist @ values) / (255.0 * n)             # exact integer sums, then one division
    var = (hist @ values**2) / (255.0**2 * n) - mean**2
    return mean.tolist(), np.sqrt(np.maximum(var, 0.0)).tolist()


def _array_split(name: str, images: np.ndarray, labels: np.ndarray) -> Split:
    hist = pixel_histogram(images) if name == "train" else None
    return Split(name, ArrayDataset(images, labels), hist, int(np.prod(images.shape[1:])))


# --------------------------------------------------------------------------------------
# Planners, one per layout
# --------------------------------------------------------------------------------------

def plan_fashion_mnist(src: Path, **_) -> Plan:
    if not fashion_mnist_present(src):
        raise SourceError(f"{src}: not a Fashion-MNIST folder "
                          f"(expected {LAYOUTS['fashion_mnist']})")
    splits = []
    for name in ("train", "val"):
        gray, labels = read_fashion_mnist(src, name)
        splits.append(_array_split(name, gray_to_rgb_padded(gray, 32), labels))
    return Plan(splits, list(FASHION_MNIST_CLASSES), 32)


def _plan_cifar(variant: str, src: Path, **_) -> Plan:
    classes = cifar_classes(src, variant)
    splits = [_array_split(name, *read_cifar(src, name, variant)) for name in ("train", "val")]
    return Plan(splits, classes, 32)


def plan_cifar10(src: Path, **kw) -> Plan:
    return _plan_cifar("cifar10", src, **kw)


def plan_cifar100(src: Path, **kw) -> Plan:
    return _plan_cifar("cifar100", src, **kw)


def plan_stl10(src: Path, unlabeled: bool = False, **_) -> Plan:
    classes = stl10_classes(src)
    names = ("train", "val", "unlabeled") if unlabeled else ("train", "val")
    splits = [_array_split(name, *read_stl10(src, name)) for name in names]
    return Plan(splits, classes, 96)


FFCV_MAX_SIDE = 65535   # RGBImageField records height and width as uint16


def _stored_like_ffcv(image: np.ndarray, max_resolution: int | None) -> np.ndarray:
    """The image as ffcv 1.0.2's ``fields.rgb_image.resizer`` stores it (same arithmetic),
    for the statistics and the page size; :class:`BadImageError` when it cannot be stored:
    a side resized to 0 px, or a side longer than ffcv records."""
    h, w = image.shape[:2]
    if max_resolution is not None:
        size = np.array([w, h])
        ratio = max_resolution / size.max()
        if ratio < 1:
            import cv2

            new_w, new_h = (ratio * size).astype(int)
            if min(new_w, new_h) < 1:
                raise BadImageError(f"cannot be stored: {w}x{h} px resized to max_resolution "
                                    f"{max_resolution} leaves a side of 0 px")
            image = cv2.resize(image, (int(new_w), int(new_h)), interpolation=cv2.INTER_AREA)
    if max(image.shape[:2]) > FFCV_MAX_SIDE:
        raise BadImageError(f"cannot be stored: {w}x{h} px, sides over {FFCV_MAX_SIDE} px "
                            "(lower max_resolution)")
    return image


def _check_files(task):
    """First pass over a chunk of image files: decode, convert, resize, count pixels."""
    paths, max_resolution, want_hist = task
    hist = np.zeros((3, 256), dtype=np.int64)
    results = []
    for path in paths:
        try:
            image, source = load_rgb(path)
            array = _stored_like_ffcv(np.asarray(image), max_resolution)
        except BadImageError as e:
            results.append((False, str(e), 0))
            continue
        if want_hist:
            for c in range(3):
                hist[c] += np.bincount(array[..., c].ravel(), minlength=256)
        results.append((True, source, array.nbytes))
    return results, hist


def plan_imagefolder(src: Path, max_resolution: int | None = DEFAULT_MAX_RESOLUTION,
                     workers: int = 1, **_) -> Plan:
    train, classes, train_links = list_image_folder(src, "train")
    val, _, val_links = list_image_folder(src, "val", classes)
    plan = Plan([], classes, None, "jpg")
    for name, links in (("train", train_links), ("val", val_links)):
        plan.skipped += [{"split": name, "file": link.relative_to(src).as_posix(),
                          "reason": f"not followed: {why}"} for link, why in links]
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for name, samples in (("train", train), ("val", val)):
            paths = [p for p, _ in samples]
            chunk = max(1, min(256, len(paths) // (4 * workers) + 1))
            tasks = [(paths[i:i + chunk], max_resolution, name == "train")
                     for i in range(0, len(paths), chunk)]
            outcomes = pool.imap(_check_files, tasks) if pool else map(_check_files, tasks)
            good, labels, hist, biggest = [], [], np.zeros((3, 256), np.int64), 0
            results = []
            with tqdm(total=len(paths), desc=f"checking {name}", unit="file",
                      disable=not show_progress()) as progress:
                for chunk_results, chunk_hist in outcomes:
                    results += chunk_results
                    hist += chunk_hist
                    progress.update(len(chunk_results))
            for (path, label), (ok, info, nbytes) in zip(samples, results, strict=True):
                rel = path.relative_to(src).as_posix()
                if not ok:
                    plan.skipped.append({"split": name, "file": rel, "reason": info})
                    continue
                if info is not None:
                    plan.converted.append({"split": name, "file": rel, "from": info})
                    if info.endswith(";16"):
                        plan.rescaled.append({"split": name, "file": rel, "from": info})
                good.append(path)
                labels.append(label)
                biggest = max(biggest, nbytes)
            if not good:
                raise SourceError(f"{src / name}: none of the {len(samples)} files is a readable "
                                  f"image (expected {IMAGE_FOLDER_LAYOUT})")
            counts = np.bincount(labels, minlength=len(classes))
            plan.empty_classes += [
                {"split": name, "class": c, "label": y, "folder": f"{name}/{c}"}
                for y, c in enumerate(classes) if counts[y] == 0 and (src / name / c).is_dir()]
            plan.splits.append(Split(name, FileDataset(good, labels),
                                     hist if name == "train" else None, biggest))
    finally:
        if pool is not None:
            pool.terminate()
    return plan


PLANNERS = {
    "fashion_mnist": plan_fashion_mnist,
    "cifar10": plan_cifar10,
    "cifar100": plan_cifar100,
    "stl10": plan_stl10,
    "imagefolder": plan_imagefolder,
}


# --------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------

def _check_options(dataset, max_resolution, jpeg_quality, workers, write_mode, unlabeled):
    if dataset not in PLANNERS:
        raise OptionError(f"unknown dataset {dataset!r}; known: {', '.join(PLANNERS)}")
    if max_resolution is not None:
        if dataset != "imagefolder":
            raise OptionError(f"max_resolution={max_resolution}: only imagefolder is resized "
                              f"({dataset} is stored at its native size)")
        if int(max_resolution) < 1:
            raise OptionError(f"max_resolution={max_resolution}: expected a positive integer")
    if not 1 <= int(jpeg_quality) <= 100:
        raise OptionError(f"jpeg_quality={jpeg_quality}: expected an integer in 1..100")
    if workers is not None and int(workers) < 1:
        raise OptionError(f"workers={workers}: expected a positive integer")
    if write_mode not in (None, "raw", "jpg"):
        raise OptionError(f"write_mode={write_mode!r}: expected 'raw' or 'jpg'")
    if unlabeled and dataset != "stl10":
        raise OptionError(f"unlabeled=True: only stl10 has an unlabeled split, not {dataset}")


def prepare(dataset: str, src: str | os.PathLike, out: str | os.PathLike,
            max_resolution: int | None = None, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
            workers: int | None = None, *, write_mode: str | None = None,
            unlabeled: bool = False, command: str | None = None, quiet: bool = False) -> dict:
    """Write ``out/train.beton``, ``out/val.beton`` [, ``out/unlabeled.beton``] and
    ``out/manifest.json`` from the raw ``dataset`` at ``src``; return the manifest.

    dataset: fashion_mnist | cifar10 | cifar100 | stl10 | imagefolder.
    max_resolution: imagefolder only, the longer side (default 400; None elsewhere).
    jpeg_quality: for JPEG-stored images (imagefolder by default).
    workers: encoding processes (default and ceiling: the CPUs this process may use).
    write_mode: 'raw' (default, exact) for the fixed-size datasets, 'jpg' for imagefolder.
    unlabeled: stl10 only, also write the 100,000 unlabeled images (label -1).
    command: recorded in the manifest (the CLI passes its command line).

    Raises SourceError (missing source, wrong layout), OptionError (bad argument) before
    writing anything, WriteError if writing fails (nothing is left behind).
    The .beton files are byte-identical between runs only with ``workers=1`` (ffcv's workers
    claim file pages in whatever order they finish); what they hold is the same either way.
    """
    t0 = time.time()
    _check_options(dataset, max_resolution, jpeg_quality, workers, write_mode, unlabeled)
    src, out = Path(src), Path(out)
    workers = min(int(workers), available_cpus()) if workers is not None else available_cpus()
    if dataset == "imagefolder" and max_resolution is None:
        max_resolution = DEFAULT_MAX_RESOLUTION
    if command is None:
        command = (f"data_prep.prepare({dataset!r}, {str(src)!r}, {str(out)!r}, "
                   f"max_resolution={max_resolution!r}, jpeg_quality={jpeg_quality!r}, "
                   f"workers={workers!r}, write_mode={write_mode!r}, unlabeled={unlabeled!r})")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    if not src.exists():
        raise SourceError(f"{src}: no such file or directory (expected {LAYOUTS[dataset]})")
    if out.exists() and not out.is_dir():
        raise OptionError(f"{out}: exists and is not a directory")

    plan = PLANNERS[dataset](src, max_resolution=max_resolution, workers=workers,
                             unlabeled=unlabeled)
    mode = write_mode or plan.write_mode
    quality = int(jpeg_quality) if mode == "jpg" else None
    if plan.skipped:
        say(f"skipped {len(plan.skipped)} input(s) (files, reasons: manifest.json 'skipped')")
    if plan.converted:
        say(f"converted {len(plan.converted)} image(s) to RGB (manifest.json 'converted')")
    if plan.rescaled:
        say(f"rescaled {len(plan.rescaled)} 16-bit image(s) to 8 bits (manifest.json 'rescaled')")
    for e in plan.empty_classes:
        say(f"warning: {src / e['folder']}: no usable image; class {e['class']!r} (label "
            f"{e['label']}) is kept with 0 {e['split']} images (manifest.json 'empty_classes')")

    out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temps(out)
    if stale:
        say(f"removed {len(stale)} temporary file(s) left by data_prep runs that died: "
            + ", ".join(p.name for p in stale))
    tmp = {s.name: out / temp_name(SPLIT_FILES[s.name]) for s in plan.splits}
    manifest_tmp = out / temp_name("manifest.json")
    try:
        for s in plan.splits:
            write_beton(tmp[s.name], s.dataset, write_mode=mode, max_resolution=max_resolution,
                        jpeg_quality=int(jpeg_quality), workers=workers,
                        max_sample_bytes=s.max_sample_bytes, desc=f"{dataset} {s.name}")
            say(f"{s.name}: {len(s.dataset)} images")
        mean, std = mean_std(plan.splits[0].hist)
        files = {s.name: SPLIT_FILES[s.name] for s in plan.splits}
        manifest = {
            "dataset": dataset,
            "source": str(src.resolve()),
            "classes": plan.classes,
            "num_classes": len(plan.classes),
            "sizes": {s.name: len(s.dataset) for s in plan.splits},
            "files": files,
            "sha256": {files[n]: sha256_file(p) for n, p in tmp.items()},
            "bytes": {files[n]: p.stat().st_size for n, p in tmp.items()},
            "image_size": plan.image_size,
            "max_resolution": max_resolution,
            "write_mode": mode,
            "jpeg_quality": quality,
            "mean": mean,
            "std": std,
            "stats_note": ("per-channel mean/std in [0,1] over every pixel of the written "
                           "train split" + (" (before JPEG encoding)" if mode == "jpg" else "")),
            "fields": dict(FIELDS),
            "unlabeled_label": -1 if "unlabeled" in files else None,
            "command": command,
            "skipped": plan.skipped,
            "converted": plan.converted,
            "rescaled": plan.rescaled,
            "rescale_note": "16-bit samples stored as their high byte (v >> 8: 0..65535 -> "
                            "0..255, 16-bit mid-grey stays mid-grey)",
            "empty_classes": plan.empty_classes,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": _versions(),
        }
        manifest["elapsed_s"] = round(time.time() - t0, 2)
        manifest_tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        # Commit: the old manifest goes first, so no moment shows a manifest beside files
        # it does not describe; outputs of an older run that this one does not write go too.
        (out / "manifest.json").unlink(missing_ok=True)
        for name, final in SPLIT_FILES.items():
            if name in tmp:
                os.replace(tmp[name], out / final)
            else:
                (out / final).unlink(missing_ok=True)
        os.replace(manifest_tmp, out / "manifest.json")
    finally:
        for p in [*tmp.values(), manifest_tmp]:
            p.unlink(missing_ok=True)
    sizes = ", ".join(f"{n} {manifest['bytes'][f] / 2**20:.1f} MiB" for n, f in files.items())
    say(f"wrote {out} ({sizes}) in {time.time() - t0:.1f} s")
    return manifest


_TEMP = re.compile(r"^\.(?P<final>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.tmp$")


def temp_name(final: str, pid: int | None = None) -> str:
    """Hidden temporary name of an output while it is written: the writer's host and PID in
    it, so a later run can tell a dead writer's leftovers from a live concurrent writer's."""
    return f".{final}.{_host()}.{os.getpid() if pid is None else pid}.tmp"


def _host() -> str:
    return socket.gethostname().split(".")[0] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # someone else's process
        return True
    return True


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete ``out``'s temporary files whose writer (same host, by PID) is no longer running,
    e.g. after a SIGKILL; those of a running writer and of other hosts are left alone."""
    removed = []
    for path in sorted(out.iterdir()):
        m = _TEMP.match(path.name)
        if m and m["host"] == _host() and not _alive(int(m["pid"])) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("ffcv", "numpy", "pillow", "mpcl"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = None
    return found


__all__ = ["prepare", "PLANNERS", "LAYOUTS", "OptionError", "SourceError", "WriteError",
           "pixel_histogram", "mean_std", "DEFAULT_MAX_RESOLUTION"]
