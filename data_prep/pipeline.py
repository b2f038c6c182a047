"""``prepare``: one raw dataset -> ``train.beton``, ``val.beton`` [, ``unlabeled.beton``] and
``manifest.json`` in an output folder.

Each dataset has a planner (:mod:`data_prep.planners`) that reads its official layout through
``mpcl.data.sources`` and returns the splits to write; :func:`prepare` then writes them all with
the one generic writer (``data_prep.beton.write_beton``), computes the statistics and the
checksums and writes the manifest. Outputs are written under temporary names and renamed only
when every one is complete, the manifest last: a folder whose ``manifest.json`` exists is
complete.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from data_prep.beton import WriteError, write_beton
from data_prep.imagefolder import DEFAULT_MAX_RESOLUTION
from data_prep.manifest import build_manifest
from data_prep.outputs import SPLIT_FILES, commit, remove_stale_temps, temp_name
from data_prep.plan import Plan, mean_std, pixel_histogram
from data_prep.planners import LAYOUTS, PLANNERS
from mpcl.data.process import available_cpus
from mpcl.data.sources import SourceError
from mpcl.files import OutputBusy, exclusive, wait_until_free, write_failed

DEFAULT_JPEG_QUALITY = 90


class OptionError(ValueError):
    """An argument of :func:`prepare` is not allowed (one-line message)."""


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
        command = _call_text(dataset, src, out, max_resolution, jpeg_quality, workers, write_mode, unlabeled)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    if not src.exists():
        raise SourceError(f"{src}: no such file or directory (expected {LAYOUTS[dataset]})")
    if out.exists() and not out.is_dir():
        raise OptionError(f"{out}: exists and is not a directory")

    plan = PLANNERS[dataset](src, max_resolution=max_resolution, workers=workers,
                             unlabeled=unlabeled)
    mode = write_mode or plan.write_mode
    _announce(plan, src, say)
    with exclusive(out, "--out"):   # one writer per output folder
        manifest = _write_outputs(out, plan, dataset, src, mode, max_resolution, int(jpeg_quality),
                                  workers, command, t0, say)
    sizes = ", ".join(f"{n} {manifest['bytes'][f] / 2**20:.1f} MiB" for n, f in manifest["files"].items())
    say(f"wrote {out} ({sizes}) in {time.time() - t0:.1f} s")
    return manifest


def prepare_if_missing(dataset: str, src: str | os.PathLike, out: str | os.PathLike, say=None) -> bool:
    """Write ``out``'s train.beton and val.beton (and manifest) with :func:`prepare`, quietly,
    when either is missing; returns whether it wrote them. When another process is writing
    into ``out`` right now, ``say`` says so and this waits for it, then uses what it wrote.
    Raises what :func:`prepare` raises."""
    out = Path(out)
    while not all((out / SPLIT_FILES[split]).is_file() for split in ("train", "val")):
        try:
            prepare(dataset, src, out, quiet=True)
            return True
        except OutputBusy as e:   # another run writes the same files: theirs will do
            if say is not None:
                say(f"waiting for the writer of {out}: {e}")
            wait_until_free(out)
    return False


def _call_text(dataset, src, out, max_resolution, jpeg_quality, workers, write_mode, unlabeled) -> str:
    """The Python call recorded as the manifest's ``command`` when the caller gives none."""
    return (f"data_prep.prepare({dataset!r}, {str(src)!r}, {str(out)!r}, "
            f"max_resolution={max_resolution!r}, jpeg_quality={jpeg_quality!r}, "
            f"workers={workers!r}, write_mode={write_mode!r}, unlabeled={unlabeled!r})")


def _write_outputs(out: Path, plan: Plan, dataset: str, src: Path, mode: str, max_resolution: int | None,
                   jpeg_quality: int, workers: int, command: str, t0: float, say) -> dict:
    """Write every split and the manifest under temporary names, then rename them into place;
    on any failure nothing of this run is left in ``out``. Returns the manifest."""
    stale = remove_stale_temps(out)
    if stale:
        say(f"removed {len(stale)} temporary file(s) left by data_prep runs that died: "
            + ", ".join(p.name for p in stale))
    tmp = {s.name: out / temp_name(SPLIT_FILES[s.name]) for s in plan.splits}
    manifest_tmp = out / temp_name("manifest.json")
    kept = "the folder's earlier files are kept" if (out / "manifest.json").is_file() else None
    try:
        for s in plan.splits:
            try:
                write_beton(tmp[s.name], s.dataset, write_mode=mode, max_resolution=max_resolution,
                            jpeg_quality=jpeg_quality, workers=workers,
                            max_sample_bytes=s.max_sample_bytes, desc=f"{dataset} {s.name}",
                            shown_as=out / SPLIT_FILES[s.name])
            except OSError as e:   # the header and tables, written by this process
                raise WriteError(str(write_failed(out / SPLIT_FILES[s.name], e, kept=kept))) from e
            except WriteError as e:
                raise WriteError(f"{e}; {kept}" if kept else str(e)) from e
            say(f"{s.name}: {len(s.dataset)} images")
        manifest = build_manifest(dataset, src, plan, tmp, mode, max_resolution,
                                  jpeg_quality if mode == "jpg" else None, command)
        manifest["elapsed_s"] = round(time.time() - t0, 2)
        try:
            manifest_tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        except OSError as e:
            raise WriteError(str(write_failed(out / "manifest.json", e, kept=kept))) from e
        commit(out, tmp, manifest_tmp)
    finally:
        for p in [*tmp.values(), manifest_tmp]:
            p.unlink(missing_ok=True)
    return manifest


def _announce(plan: Plan, src: Path, say) -> None:
    """One line per kind of input the plan did not store as it found it."""
    if plan.skipped:
        say(f"skipped {len(plan.skipped)} input(s) (files, reasons: manifest.json 'skipped')")
    if plan.converted:
        say(f"converted {len(plan.converted)} image(s) to RGB (manifest.json 'converted')")
    if plan.rescaled:
        say(f"rescaled {len(plan.rescaled)} 16-bit image(s) to 8 bits (manifest.json 'rescaled')")
    for e in plan.empty_classes:
        say(f"warning: {src / e['folder']}: no usable image; class {e['class']!r} (label "
            f"{e['label']}) is kept with 0 {e['split']} images (manifest.json 'empty_classes')")


__all__ = ["prepare", "PLANNERS", "LAYOUTS", "OptionError", "SourceError", "WriteError",
           "pixel_histogram", "mean_std", "DEFAULT_MAX_RESOLUTION", "DEFAULT_JPEG_QUALITY"]
