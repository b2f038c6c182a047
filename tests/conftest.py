import os
from pathlib import Path

import pytest

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fmnist_path() -> str:
    from mpcl.data.sources import fashion_mnist_present

    if not fashion_mnist_present(FMNIST):
        pytest.skip(f"{FMNIST}: Debian's dataset-fashion-mnist is not installed (make setup installs it)")
    return str(FMNIST)


@pytest.fixture(scope="session")
def fmnist_betons(fmnist_path, tmp_path_factory) -> str:
    """A directory with the full Fashion-MNIST train.beton / val.beton (written once, ~15 s)."""
    from data_prep import prepare

    out = tmp_path_factory.mktemp("fmnist_beton")
    prepare("fashion_mnist", fmnist_path, out, quiet=True)
    return str(out)


def free_port() -> int:
    """A port nothing listens on right now. Another process may take it before the caller
    binds it: use only for servers that cannot bind port 0 and report the port themselves
    (moto's S3 server, the Ray agents' fixed ports in the SLURM test)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the tests of a module; shut down after them."""
    ray = pytest.importorskip("ray")
    from mpcl.launch.cluster import init_ray

    os.environ["MPCL_RAY_LOG_TO_DRIVER"] = "0"
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def tiny_sweep_overrides(fmnist_path: str, subset: int, epochs: int) -> dict:
    """A sweep file's ``overrides`` for trials that take seconds on a CPU (small CNN, raw files)."""
    return {"model.backbone": "small_cnn", "model.projector_hidden": 64, "model.projector_out": 32,
            "data.loader": "torch", "data.path": fmnist_path, "data.subset": subset, "data.val_subset": subset,
            "data.batch_size": 64, "data.num_workers": 0, "train.epochs": epochs, "train.progress": "false",
            "optim.name": "sgd", "optim.lr": 0.3, "optim.scale_lr": False, "optim.warmup_epochs": 0,
            "tracking.wandb": "disabled"}


def tiny_overrides(out, method="simclr", **extra) -> list[str]:
    """A run that takes a few seconds on a laptop CPU: small CNN, 512 samples, 1 epoch."""
    base = {
        "method.name": method, "model.backbone": "small_cnn", "data.subset": 512, "data.val_subset": 256,
        "data.loader": "torch",  # the raw idx files (fmnist_path); the ffcv loader: test_ffcv_loader.py
        "data.batch_size": 128, "train.epochs": 1, "optim.warmup_epochs": 0, "train.progress": "false",
        "model.projector_hidden": 128, "model.projector_out": 64, "model.predictor_hidden": 32,
        "out": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


os.environ.setdefault("WANDB_MODE", "disabled")


def pytest_collection_modifyitems(config, items):
    """Under mutation testing (mutmut sets MUTANT_UNDER_TEST; ``make mutate``) the tests that
    train or load real data run last: mutmut stops at the first failure, so a mutant the unit
    tests kill costs seconds instead of every training run first."""
    if os.environ.get("MUTANT_UNDER_TEST"):
        heavy = {"fmnist_path", "fmnist_betons", "betons", "two_worker_results"}
        items.sort(key=lambda item: bool(heavy & set(item.fixturenames)))
