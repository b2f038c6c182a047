"""Dataset specs: what the rest of mpcl needs to know about each dataset.

``DATASETS`` is the registry; config validation checks ``data.dataset`` against it.
Mean/std are per-channel statistics of the training split in [0, 1] pixel units
(Fashion-MNIST's are those of the 32x32 zero-padded images mpcl feeds, replicated over the
three channels).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_size: int          # side of the (square) training crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    raw_path: str            # default location of the raw files (official layout)
    beton_dir: str           # default location of train.beton / val.beton
    train_size: int
    val_size: int

    def default_path(self, loader: str) -> str:
        """Where ``data.path`` points when it is empty: the .beton folder or the raw files."""
        return self.beton_dir if loader == "ffcv" else self.raw_path


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("fashion_mnist", 10, 32, (0.2190,) * 3, (0.3318,) * 3,
                    "/usr/share/datasets/fashion-mnist", "data/fmnist", 60_000, 10_000),
        DatasetSpec("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    "data/raw/cifar-10-batches-py", "data/cifar10", 50_000, 10_000),
        DatasetSpec("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                    "data/raw/cifar-100-python", "data/cifar100", 50_000, 10_000),
        DatasetSpec("stl10", 10, 96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713),
                    "data/raw/stl10_binary", "data/stl10", 5_000, 8_000),
        DatasetSpec("imagenet100", 100, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                    "data/raw/imagenet100", "data/imagenet100", 126_689, 5_000),
    ]
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None
