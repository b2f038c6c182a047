"""The image-folder planner (ImageNet-100 and the like): a first pass decodes every file as
ffcv will store it, so unreadable files are skipped with their reason before anything is
written, and counts the training pixels and the largest sample."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_prep.beton import show_progress
from data_prep.plan import FileDataset, Plan, Split, sides_of
from mpcl.data.sources import (IMAGE_FOLDER_LAYOUT, BadImageError, SourceError,
                               list_image_folder, load_rgb)

DEFAULT_MAX_RESOLUTION = 400   # longer side, as ffcv-imagenet's *_400_* files


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
            results.append((False, str(e), 0, None))
            continue
        if want_hist:
            for c in range(3):
                hist[c] += np.bincount(array[..., c].ravel(), minlength=256)
        results.append((True, source, array.nbytes, array.shape[:2]))
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
            results, hist = _check_split(name, samples, max_resolution, workers, pool)
            plan.splits.append(_usable(plan, src, name, samples, results, hist))
    finally:
        if pool is not None:
            pool.terminate()
    return plan


def _check_split(name: str, samples: list[tuple[Path, int]], max_resolution: int | None,
                 workers: int, pool) -> tuple[list, np.ndarray]:
    """:func:`_check_files` over every file of a split, in chunks (on ``pool`` when given):
    one ``(ok, info, nbytes, stored (h, w))`` per file and the pixel histogram (train only)."""
    paths = [p for p, _ in samples]
    chunk = max(1, min(256, len(paths) // (4 * workers) + 1))
    tasks = [(paths[i:i + chunk], max_resolution, name == "train")
             for i in range(0, len(paths), chunk)]
    outcomes = pool.imap(_check_files, tasks) if pool else map(_check_files, tasks)
    hist, results = np.zeros((3, 256), np.int64), []
    with tqdm(total=len(paths), desc=f"checking {name}", unit="file",
              disable=not show_progress()) as progress:
        for chunk_results, chunk_hist in outcomes:
            results += chunk_results
            hist += chunk_hist
            progress.update(len(chunk_results))
    return results, hist


def _usable(plan: Plan, src: Path, name: str, samples: list[tuple[Path, int]], results: list,
            hist: np.ndarray) -> Split:
    """The split of the files that passed the check; the others (and the conversions, the
    classes left empty) are recorded in ``plan``."""
    good, labels, biggest, shapes = [], [], 0, []
    for (path, label), (ok, info, nbytes, shape) in zip(samples, results, strict=True):
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
        shapes.append(shape)
        biggest = max(biggest, nbytes)
    if not good:
        raise SourceError(f"{src / name}: none of the {len(samples)} files is a readable "
                          f"image (expected {IMAGE_FOLDER_LAYOUT})")
    counts = np.bincount(np.maximum(labels, 0), minlength=len(plan.classes))
    plan.empty_classes += [
        {"split": name, "class": c, "label": y, "folder": f"{name}/{c}"}
        for y, c in enumerate(plan.classes) if counts[y] == 0 and (src / name / c).is_dir()]
    return Split(name, FileDataset(good, labels), hist if name == "train" else None, biggest,
                 sides_of(np.array(shapes)))
