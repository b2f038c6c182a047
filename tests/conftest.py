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


# Ports for servers that must be told a number (Ray's GCS and agent ports): picked from
# 20000-32767, below the kernel's ephemeral range (32768-60999 by default) and above Ray's
# worker ports (10002-19999), so neither a port-0 bind nor an outgoing connection of any process
# can take one between the check and the server's own bind; distinct within this session.
_UNASSIGNED = range(20000, 32768)
_handed_out: set[int] = set()


def unassigned_port() -> int:
    """A port in 20000-32767 that nothing listens on now and this session has not handed out."""
    import random
    import socket

    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    candidates = [p for p in _UNASSIGNED if p < low and p not in _handed_out]
    random.SystemRandom().shuffle(candidates)
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_UNASSIGNED.start}-{low - 1}")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the tests of a module; shut down after them."""
    ray = pytest.importorskip("ray")
    from mpcl.launch.cluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _gloo_rank(rank: int, world: int, out_dir: str, fn) -> None:
    import torch
    import torch.distributed as tdist

    torch.set_num_threads(1)
    # a file rendezvous: no port to pick in advance (gloo binds its own at the moment of use)
    tdist.init_process_group("gloo", init_method=f"file://{Path(out_dir) / 'rendezvous'}", rank=rank,
                             world_size=world)
    try:
        torch.save(fn(rank, world), Path(out_dir) / f"rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def on_gloo_ranks(fn, out_dir, world: int = 2) -> list:
    """``fn(rank, world)`` in ``world`` processes joined in one gloo process group (a module-level
    function: the processes are spawned); what each returned (tensors), in rank order."""
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_gloo_rank, args=(world, str(out_dir), fn), nprocs=world, join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(world)]


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

# wandb builds its pydantic models at import, and pydantic parses their source with ast.
# CPython 3.11 keeps one AST-constructor depth counter per interpreter, so a parse that starts
# while another is under way (another thread, or a finalizer the garbage collector runs) makes
# the outer one fail with "AST constructor recursion depth mismatch" (python/cpython#106905),
# and leaves wandb half-imported for every later test. Imported here, before any test has
# started threads or numba dispatchers, that first import runs alone.
try:
    import wandb  # noqa: F401
except ImportError:
    pass


# fixtures that read Fashion-MNIST or betons written from it, or that spawn two gloo workers (a few
# seconds that every mutant would pay again): a test that takes one trains or loads real data, or
# starts processes, and is marked ``real_data`` (``pytest -m "not slow and not ray and not real_data"``:
# the unit tests alone, what ``make mutate`` runs against each mutant)
REAL_DATA_FIXTURES = {"fmnist_path", "fmnist_betons", "betons", "two_worker_results", "two_rank_gradients"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_DATA_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.real_data)
