"""One planner per raw layout: reads the dataset through ``mpcl.data.sources`` and returns
the :class:`~data_prep.plan.Plan` of splits to write. ``PLANNERS`` maps the names the CLI
takes to them, ``LAYOUTS`` says what each expects at ``--src``."""

from __future__ import annotations

from pathlib import Path

from data_prep.imagefolder import plan_imagefolder
from data_prep.plan import Plan, array_split
from mpcl.data.sources import (FASHION_MNIST_CLASSES, IMAGE_FOLDER_LAYOUT, SourceError,
                               cifar_classes, fashion_mnist_present, gray_to_rgb_padded,
                               read_cifar, read_fashion_mnist, read_stl10, stl10_classes)

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


def plan_fashion_mnist(src: Path, **_) -> Plan:
    if not fashion_mnist_present(src):
        raise SourceError(f"{src}: not a Fashion-MNIST folder "
                          f"(expected {LAYOUTS['fashion_mnist']})")
    splits = []
    for name in ("train", "val"):
        gray, labels = read_fashion_mnist(src, name)
        splits.append(array_split(name, gray_to_rgb_padded(gray, 32), labels))
    return Plan(splits, list(FASHION_MNIST_CLASSES), 32)


def _plan_cifar(variant: str, src: Path, **_) -> Plan:
    classes = cifar_classes(src, variant)
    splits = [array_split(name, *read_cifar(src, name, variant)) for name in ("train", "val")]
    return Plan(splits, classes, 32)


def plan_cifar10(src: Path, **kw) -> Plan:
    return _plan_cifar("cifar10", src, **kw)


def plan_cifar100(src: Path, **kw) -> Plan:
    return _plan_cifar("cifar100", src, **kw)


def plan_stl10(src: Path, unlabeled: bool = False, **_) -> Plan:
    classes = stl10_classes(src)
    names = ("train", "val", "unlabeled") if unlabeled else ("train", "val")
    splits = [array_split(name, *read_stl10(src, name)) for name in names]
    return Plan(splits, classes, 96)


PLANNERS = {
    "fashion_mnist": plan_fashion_mnist,
    "cifar10": plan_cifar10,
    "cifar100": plan_cifar100,
    "stl10": plan_stl10,
    "imagefolder": plan_imagefolder,
}
