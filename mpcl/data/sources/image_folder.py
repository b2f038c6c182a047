"""Image folders: train/<class>/<image>, val/<class>/<image> (ImageNet-100 and the like),
listed in torchvision ImageFolder's order and decoded one file at a time to 8-bit RGB."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mpcl.data.sources.errors import BadImageError, SourceError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_FOLDER_LAYOUT = ("train/<class>/<image> and val/<class>/<image> (JPEG, PNG, ...), or, for "
                       "unlabelled images, train/<image> and val/<image>")


def list_image_folder(root: str | os.PathLike, split: str, classes: list[str] | None = None
                      ) -> tuple[list[tuple[Path, int]], list[str], list[tuple[Path, str]]]:
    """Every file under ``root/split/<class>/`` with its label, in torchvision ImageFolder's
    order (classes sorted, then ``sorted(os.walk(...))``, file names sorted). A split folder
    with no class folders holds unlabelled images: every file under it, label -1, no classes
    (then ``val`` must be unlabelled too).

    Classes are the sorted non-hidden sub-folders of ``train/``; pass them as ``classes``
    when listing ``val`` (a val class folder that train lacks is an error, a missing one is
    not). Symbolic links to folders are followed, but every real folder is listed once: a
    link back to the split, to a class folder or to a folder already listed (a loop) is not
    followed and is returned in the third element, ``(link, reason)``, as is a class folder
    that is the same real folder as an earlier class. Files are not opened here: see
    :func:`load_rgb`.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: no such directory (expected {IMAGE_FOLDER_LAYOUT})")
    base = root / split
    classes = _class_folders(base, classes)
    # Real folder -> the first path it is listed under; the split folder and every class
    # folder are claimed before walking, so no link can pull another class's images in.
    owner = {_real(base): base}
    for name in classes:
        if (base / name).is_dir():
            owner.setdefault(_real(base / name), base / name)
    samples, not_followed = [], []
    if not classes:
        files, links = _walk_once(base, owner, root)
        samples, not_followed = [(path, -1) for path in files], links
    for label, name in enumerate(classes):
        top = base / name
        if not top.is_dir():
            continue
        if owner[_real(top)] != top:
            not_followed.append((top, f"same folder as {owner[_real(top)].relative_to(root)} "
                                      "(listed there)"))
            continue
        files, links = _walk_once(top, owner, root)
        samples += [(path, label) for path in files]
        not_followed += links
    if not samples:
        raise SourceError(f"{base}: {'the class folders hold' if classes else 'it holds'} no files "
                          f"(expected {IMAGE_FOLDER_LAYOUT})")
    return samples, list(classes), not_followed


def _class_folders(base: Path, classes: list[str] | None) -> list[str]:
    """The classes of split folder ``base``: its sorted non-hidden sub-folders, or, when
    ``classes`` (train's) is given, a check that ``base`` has no folder outside them."""
    if not base.is_dir():
        raise SourceError(f"{base}: no such directory (expected {IMAGE_FOLDER_LAYOUT})")
    folders = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        return folders   # none: unlabelled images
    if not classes and folders:
        raise SourceError(f"{base}: class folders ({', '.join(folders[:3])}{' ...' if len(folders) > 3 else ''}) "
                          "but train/ has none; label both splits or neither")
    unknown = sorted(set(folders) - set(classes))
    if unknown:
        raise SourceError(f"{base}: class folders not in train/: {', '.join(unknown[:5])}"
                          f"{' ...' if len(unknown) > 5 else ''}")
    return classes


def _real(path: Path) -> tuple[int, int]:
    """The identity of the real file or folder behind ``path`` (links resolved)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk_once(top: Path, owner: dict, root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files under class folder ``top`` (links followed) in ``sorted(os.walk)`` order, file
    names sorted, and the folders not followed because ``owner`` (real folder -> first path,
    updated here) already lists them."""
    walked, not_followed = [], []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            path = Path(dirpath) / d
            first = owner.setdefault(_real(path), path)
            if first == path:
                keep.append(d)
            else:
                not_followed.append((path, f"link to {first.relative_to(root)}, "
                                           "a folder already listed"))
        dirnames[:] = keep
        walked.append((dirpath, filenames))
    files = [Path(dirpath) / f for dirpath, filenames in sorted(walked) for f in sorted(filenames)]
    return files, not_followed


def _source_format(im: Image.Image) -> str:
    """PIL's mode, with ``;16`` when the file holds 16 bits per sample ("RGB;16", "I;16"):
    PIL reads 16-bit RGB(A) as 8-bit RGB(A) and 16-bit grey as mode I;16 or I."""
    mode = "I;16" if im.mode.startswith("I;16") else im.mode
    rawmode = ""
    if im.tile:  # before load(): how the file stores its samples
        args = im.tile[0].args
        rawmode = args if isinstance(args, str) else (args[0] if args else "")
    if ";16" in str(rawmode) and not mode.endswith(";16"):
        mode += ";16"
    return mode


def _grey16_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit grey to 8-bit RGB by its high byte (v >> 8, how PIL reads 16-bit RGB), a
    transparent grey value composited on white."""
    from PIL import Image

    values = np.asarray(im).astype(np.uint32)
    grey = Image.fromarray((values >> 8).astype(np.uint8), "L")
    if "transparency" not in im.info:
        return grey.convert("RGB")
    alpha = Image.fromarray(np.where(values == im.info["transparency"], 0, 255).astype(np.uint8))
    white = Image.new("RGB", grey.size, (255, 255, 255))
    return Image.composite(grey.convert("RGB"), white, alpha)


def load_rgb(path: str | os.PathLike) -> tuple[Image.Image, str | None]:
    """Decode one image fully and convert it to 8-bit RGB.

    Returns ``(image, source_format)``, ``source_format`` being None when the file was 8-bit
    RGB, else PIL's mode with ``;16`` added for 16 bits per sample (see :func:`_source_format`).
    Greyscale, palette, CMYK etc. go through PIL's ``convert("RGB")``; images with
    transparency (RGBA, LA, PA, palette/greyscale with a transparent colour) are composited
    on white first. 16-bit images keep their high byte (v >> 8), so 16-bit mid-grey is 8-bit
    mid-grey (PIL's ``convert`` would clip 16-bit grey to white). Raises :class:`BadImageError`
    (reason in the message) for an empty, truncated, corrupt or non-image file and for 32-bit
    integer or float images, which have no defined 8-bit scale.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError("empty file (0 bytes)")
        with Image.open(path) as im:
            source = _source_format(im)
            im.load()
            mode = im.mode
            if source == "RGB":
                return im.copy(), None
            if source == "I;16":
                return _grey16_to_rgb(im), source
            if mode in ("I", "F"):
                raise BadImageError(f"{'32-bit integer' if mode == 'I' else 'floating-point'} "
                                    f"pixels (mode {mode}): no defined 8-bit scale")
            if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB"), source
            return im.convert("RGB"), source
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise BadImageError(f"too large to decode safely ({e})") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL plugins raise many types on malformed files
        raise BadImageError(f"unreadable image ({type(e).__name__}: {e})") from None
