"""A damaged Fashion-MNIST download is one line naming the file, exit 2, for the torch
loader (``data.loader=torch`` reads the raw files) and for ``data_prep`` alike."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from mpcl import cli

RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
GOOD_LABELS = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3, 4]))  # a valid 4-label idx file


def _damage(how: str, data: bytes) -> bytes:
    if how == "truncated":
        return data[: len(data) // 2]
    return data[:10] + bytes(200) + data[210:]  # garbage inside the deflate stream


@pytest.fixture(params=["truncated", "corrupt"])
def damaged(request, tmp_path, fmnist_path) -> Path:
    """A copy of the Fashion-MNIST folder whose train-images .gz is damaged."""
    src = tmp_path / "fmnist"
    src.mkdir()
    for name in RAW:
        (src / f"{name}.gz").symlink_to(Path(fmnist_path) / f"{name}.gz")
    bad = src / "train-images-idx3-ubyte.gz"
    data = (Path(fmnist_path) / bad.name).read_bytes()
    bad.unlink()
    bad.write_bytes(_damage(request.param, data))
    return bad


def test_the_torch_loader_names_the_damaged_file(damaged, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--no-ray", "data.loader=torch", f"data.path={damaged.parent}", "model.backbone=small_cnn",
                  f"out={tmp_path / 'run'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{damaged}: truncated or corrupt gzip file" in err[0], err
    assert not (tmp_path / "run").exists()


def test_data_prep_names_the_damaged_file(damaged, tmp_path, capsys):
    from data_prep.__main__ import main

    assert main(["fashion_mnist", "--src", str(damaged.parent), "--out", str(tmp_path / "beton")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{damaged}: truncated or corrupt gzip file" in err[0], err


def test_a_sound_gz_still_reads(tmp_path):
    from mpcl.data.sources import read_idx

    (tmp_path / "labels.gz").write_bytes(GOOD_LABELS)
    assert read_idx(tmp_path / "labels").tolist() == [1, 2, 3, 4]
