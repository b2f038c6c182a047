"""``manifest.json``: what a ``data_prep`` run wrote, from what, with which settings, and the
training split's pixel statistics."""

from __future__ import annotations

import time
from pathlib import Path

from data_prep.beton import sha256_file
from data_prep.outputs import SPLIT_FILES
from data_prep.plan import Plan, mean_std
from mpcl.data.betons import FIELDS


def build_manifest(dataset: str, src: Path, plan: Plan, tmp: dict[str, Path], mode: str,
                   max_resolution: int | None, quality: int | None, command: str) -> dict:
    """The manifest of ``plan``'s splits, written (under temporary names) at ``tmp``."""
    mean, std = mean_std(plan.splits[0].hist)
    files = {s.name: SPLIT_FILES[s.name] for s in plan.splits}
    return {
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
        "unlabeled_label": -1 if "unlabeled" in files or not plan.splits[0].labelled else None,
        "labelled": {s.name: s.labelled for s in plan.splits},
        "sides": {s.name: s.sides for s in plan.splits},
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


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("ffcv", "numpy", "pillow", "mpcl"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = None
    return found
