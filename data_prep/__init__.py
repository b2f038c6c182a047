"""Writers: raw dataset -> FFCV ``.beton`` files plus a ``manifest.json``.

    python -m data_prep cifar10 --src data/raw --out data/cifar10

or, from Python, ``data_prep.prepare("cifar10", "data/raw", "data/cifar10")``, which returns
the manifest (``prepare_if_missing``: only when the files are not there yet, as a run does).
``mpcl.data.betons.BetonReader`` reads a written file back without ffcv's Loader.
"""

from data_prep.beton import WriteError, sha256_file, write_beton
from data_prep.pipeline import (DEFAULT_MAX_RESOLUTION, PLANNERS, OptionError, SourceError,
                               mean_std, pixel_histogram, prepare, prepare_if_missing)

DATASETS = tuple(PLANNERS)

__all__ = ["prepare", "prepare_if_missing", "DATASETS", "write_beton", "sha256_file",
           "SourceError", "OptionError", "WriteError", "pixel_histogram", "mean_std",
           "DEFAULT_MAX_RESOLUTION"]
