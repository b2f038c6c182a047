"""Readers for datasets in their official on-disk formats.

Each array reader returns ``(images, labels)`` with ``images`` a uint8 array of shape
(N, H, W, 3) (RGB) or (N, H, W) (grayscale) and ``labels`` an int64 array of shape (N,):
``read_fashion_mnist`` (idx files), ``read_cifar`` (CIFAR-10/100 python pickles, folder or
.tar.gz), ``read_stl10`` (binary files, memory-mapped). Image folders of any size are listed
by ``list_image_folder`` and decoded one file at a time by ``load_rgb``.
The loaders and the ``data_prep`` writers both read raw data through this package; a
missing source or a wrong layout raises ``SourceError`` with a one-line message naming the
path and the layout expected.
"""

from mpcl.data.sources.cifar import CIFAR_LAYOUTS, cifar_classes, read_cifar
from mpcl.data.sources.errors import BadImageError, SourceError
from mpcl.data.sources.fashion_mnist import (FASHION_MNIST_CLASSES, FASHION_MNIST_FILES,
                                             fashion_mnist_present, gray_to_rgb_padded, read_fashion_mnist,
                                             read_idx)
from mpcl.data.sources.image_folder import IMAGE_FOLDER_LAYOUT, list_image_folder, load_rgb
from mpcl.data.sources.stl10 import STL10_CLASSES, STL10_FILES, read_stl10, stl10_classes, stl10_root

__all__ = [
    "BadImageError", "CIFAR_LAYOUTS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES",
    "IMAGE_FOLDER_LAYOUT", "STL10_CLASSES", "STL10_FILES", "SourceError", "cifar_classes",
    "fashion_mnist_present", "gray_to_rgb_padded", "list_image_folder", "load_rgb",
    "read_cifar", "read_fashion_mnist", "read_idx", "read_stl10", "stl10_classes", "stl10_root",
]
