"""python -m data_prep <dataset> --src PATH --out DIR [options]"""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap

from data_prep.beton import WriteError
from mpcl.files import OutputError
from data_prep.pipeline import (DEFAULT_JPEG_QUALITY, DEFAULT_MAX_RESOLUTION, LAYOUTS, PLANNERS,
                               OptionError, SourceError, prepare)

EPILOG = "source layouts (--src):\n" + "".join(
    f"  {name:<14} {textwrap.fill(layout, 72, subsequent_indent=' ' * 17)}\n"
    for name, layout in LAYOUTS.items()) + """
fashion_mnist: 28x28 grey -> 32x32 RGB (2 black pixels of padding per side, grey replicated).
imagefolder: classes = sorted folder names of train/ (an empty one stays a class, with a
warning; manifest 'empty_classes'); greyscale, palette, CMYK images are converted to RGB,
transparency is composited on white; 16-bit images keep their high byte ('rescaled');
empty, truncated, unreadable and non-image files, images that cannot be stored (a side
resized to 0 px) and links to folders already listed (loops) are skipped and listed in the
manifest ('skipped').

outputs (--out): train.beton, val.beton [, unlabeled.beton], manifest.json; fields image
(RGBImageField), label, index (IntField: position 0..N-1 in the split). Every file is
written under a temporary name and renamed at the end, manifest.json last; temporary
files of a run that was killed are removed by the next run.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command's parser (also read by the docs' generated CLI page)."""
    parser = argparse.ArgumentParser(
        prog="python -m data_prep", description="Write a raw dataset as FFCV .beton files.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=list(PLANNERS))
    parser.add_argument("--src", required=True, help="raw dataset (see the layouts below)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--max-resolution", type=int, default=None,
                        help=f"imagefolder: longer side after resizing (default "
                             f"{DEFAULT_MAX_RESOLUTION}); other datasets keep their size")
    parser.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY,
                        help="JPEG quality for jpg-stored images (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="encoding processes (default and ceiling: the usable CPUs)")
    parser.add_argument("--write-mode", choices=["raw", "jpg"], default=None,
                        help="raw pixels (default for fixed-size datasets, exact) or JPEG "
                             "(default for imagefolder)")
    parser.add_argument("--unlabeled", action="store_true",
                        help="stl10: also write unlabeled.beton (100,000 images, label -1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        prepare(args.dataset, args.src, args.out, max_resolution=args.max_resolution,
                jpeg_quality=args.jpeg_quality, workers=args.workers,
                write_mode=args.write_mode, unlabeled=args.unlabeled,
                command=shlex.join(["python", "-m", "data_prep", *argv]))
    except (SourceError, OptionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OutputError as e:   # --out in use by another writer, or not creatable
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
