"""The suite's fixtures and hooks; what test modules share besides fixtures lives in
tests/helpers (conftest is no module to import from)."""

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


@pytest.fixture(scope="session")
def fmnist_folder(fmnist_path, tmp_path_factory) -> dict[str, str]:
    """Fashion-MNIST kept as a user keeps images: 48 px PNG files in class folders (60 training and
    20 validation images of each class), and the folder data_prep wrote from them (~10 s)."""
    from data_prep import prepare
    from tests.helpers.data import fmnist_image_folder

    root = tmp_path_factory.mktemp("fmnist_folder")
    images = fmnist_image_folder(fmnist_path, root / "images", {"train": 60, "val": 20})
    prepare("imagefolder", images, root / "data", quiet=True)
    return {"images": str(images), "data": str(root / "data")}


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory) -> str:
    """A data_prep folder of 12 small colour images in 2 classes (written once, a second)."""
    from data_prep import prepare
    from tests.helpers.data import save, smooth_images

    src = tmp_path_factory.mktemp("small_folder_src")
    for k, image in enumerate(smooth_images(12, 40, 36)):
        save(src / ("train" if k < 8 else "val") / ("ant", "bee")[k % 2] / f"{k}.png", image)
    out = tmp_path_factory.mktemp("small_folder")
    prepare("imagefolder", src, out, quiet=True)
    return str(out)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the tests of a module; shut down after them."""
    ray = pytest.importorskip("ray")
    from mpcl.launch.cluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


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
REAL_DATA_FIXTURES = {"fmnist_path", "fmnist_betons", "fmnist_folder", "betons", "two_worker_results",
                      "two_rank_gradients"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_DATA_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.real_data)
