"""data_prep: raw dataset -> .beton round trips, errors and the CLI, and mpcl having missing
.beton files written (the image-folder inputs: test_data_prep_inputs.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.data import (check_output, check_stats, make_cifar, make_fashion_mnist, make_stl10, save,
                            smooth_images, tar_gz)
from data_prep import OptionError, SourceError, prepare
from data_prep.__main__ import main
from mpcl.data.betons import BetonReader
from mpcl.data.sources import (FASHION_MNIST_CLASSES, fashion_mnist_present, gray_to_rgb_padded,
                               read_fashion_mnist)

REPO = Path(__file__).resolve().parents[1]
REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------ round trips


def test_fashion_mnist_round_trip(tmp_path):
    data = make_fashion_mnist(tmp_path / "raw")
    manifest = prepare("fashion_mnist", tmp_path / "raw", tmp_path / "out", workers=2, quiet=True)
    expected = {s: (gray_to_rgb_padded(x, 32), y) for s, (x, y) in data.items()}
    check_output(tmp_path / "out", manifest, expected)
    check_stats(manifest, expected["train"][0])
    assert manifest["classes"] == list(FASHION_MNIST_CLASSES)
    assert manifest["image_size"] == 32 and manifest["write_mode"] == "raw"
    assert manifest["fields"] == {"image": "RGBImageField", "label": "IntField",
                                  "index": "IntField"}
    assert manifest["command"].startswith("data_prep.prepare('fashion_mnist'")
    assert manifest["skipped"] == [] and manifest["converted"] == []


@pytest.mark.parametrize("as_tar", [False, True], ids=["folder", "tar.gz"])
def test_cifar10_round_trip(tmp_path, as_tar):
    folder, data, classes = make_cifar(tmp_path / "raw", "cifar10")
    src = tar_gz(folder, tmp_path / "cifar-10-python.tar.gz") if as_tar else folder
    manifest = prepare("cifar10", src, tmp_path / "out", workers=1 if as_tar else 2, quiet=True)
    check_output(tmp_path / "out", manifest, data)
    check_stats(manifest, data["train"][0])
    assert manifest["classes"] == classes and manifest["num_classes"] == 10


def test_cifar100_round_trip_and_ffcv_loader(tmp_path):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    folder, data, classes = make_cifar(tmp_path / "raw", "cifar100", n_per_batch=40)
    manifest = prepare("cifar100", folder.parent, tmp_path / "out", quiet=True)
    check_output(tmp_path / "out", manifest, data)
    check_stats(manifest, data["train"][0])
    assert manifest["classes"] == classes and manifest["num_classes"] == 100
    loader = Loader(str(tmp_path / "out" / "train.beton"), batch_size=64, num_workers=1,
                    order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()],
                               "index": [IntDecoder()]})
    images, labels, indices = (np.concatenate(parts) for parts in zip(*loader, strict=True))
    np.testing.assert_array_equal(images, data["train"][0])
    np.testing.assert_array_equal(labels[:, 0], data["train"][1])
    np.testing.assert_array_equal(indices[:, 0], np.arange(40))


def test_stl10_round_trip_with_unlabeled(tmp_path):
    names = [f"name{i}" for i in range(10)]
    _, data = make_stl10(tmp_path / "raw", n_unlabeled=4, class_names=names)
    manifest = prepare("stl10", tmp_path / "raw", tmp_path / "out", unlabeled=True, quiet=True)
    readers = check_output(tmp_path / "out", manifest, data)
    check_stats(manifest, data["train"][0])
    assert manifest["classes"] == names and manifest["image_size"] == 96
    assert manifest["unlabeled_label"] == -1 and (readers["unlabeled"].labels == -1).all()
    assert (readers["train"].image(0)[:10, :30] == 255).all()      # right way up
    # a later run without --unlabeled removes the stale unlabeled.beton with the manifest
    manifest = prepare("stl10", tmp_path / "raw", tmp_path / "out", quiet=True)
    check_output(tmp_path / "out", manifest, {s: data[s] for s in ("train", "val")})


def _resized(image: np.ndarray, max_resolution: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    ratio = max_resolution / max(h, w)
    if ratio >= 1:
        return image
    return cv2.resize(image, (int(ratio * w), int(ratio * h)), interpolation=cv2.INTER_AREA)


def test_imagefolder_round_trip_jpeg(tmp_path):
    """Default storage: JPEG at quality 90, longer side capped at max_resolution."""
    src = tmp_path / "raw"
    sizes = [(20, 30), (48, 40), (64, 80), (33, 17)]
    files = {"train": [], "val": []}
    for k, (h, w) in enumerate(sizes * 2):
        split, cls = ("train" if k < 6 else "val"), ("bird", "ant")[k % 2]
        suffix = ".png" if k % 3 else ".jpg"
        image = smooth_images(1, h, w, seed=k)[0]
        options = {"quality": 95} if suffix == ".jpg" else {}
        path = save(src / split / cls / f"{k}{suffix}", image, **options)
        files[split].append((path, ("ant", "bird").index(cls)))
    expected = {}
    for split, items in files.items():
        items.sort(key=lambda t: (t[1], t[0].name))       # class order, then file name
        images = [_resized(np.asarray(Image.open(p).convert("RGB")), 48) for p, _ in items]
        expected[split] = (images, np.array([y for _, y in items]))
    manifest = prepare("imagefolder", src, tmp_path / "out", max_resolution=48, quiet=True)
    check_output(tmp_path / "out", manifest, expected, atol=3.0)
    check_stats(manifest, expected["train"][0])
    assert manifest["classes"] == ["ant", "bird"]
    assert manifest["write_mode"] == "jpg" and manifest["jpeg_quality"] == 90
    assert manifest["max_resolution"] == 48 and manifest["image_size"] is None
    assert manifest["labelled"] == {"train": True, "val": True} and manifest["unlabeled_label"] is None
    # the sizes as stored (after the 48 px cap): what the crop's default and limit are read from
    stored = [im.shape[:2] for im in expected["train"][0]]
    assert manifest["sides"]["train"] == {"min_short": min(min(s) for s in stored),
                                          "median_short": int(np.median([min(s) for s in stored])),
                                          "max_long": max(max(s) for s in stored)}


def test_imagefolder_unlabelled(tmp_path):
    """Folders without class folders: every image stored with label -1, no classes."""
    src = tmp_path / "raw"
    for k in range(5):
        save(src / ("train" if k < 3 else "val") / f"{k}.png", smooth_images(1, 16, 16, seed=k)[0])
    manifest = prepare("imagefolder", src, tmp_path / "out", quiet=True)
    assert manifest["classes"] == [] and manifest["num_classes"] == 0
    assert manifest["labelled"] == {"train": False, "val": False} and manifest["unlabeled_label"] == -1
    assert manifest["sizes"] == {"train": 3, "val": 2} and manifest["empty_classes"] == []
    assert (BetonReader(tmp_path / "out" / "train.beton").labels == -1).all()


# ------------------------------------------------------------------------------ errors, CLI


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10", "cifar100", "stl10",
                                     "imagefolder"])
def test_missing_source_names_the_path(tmp_path, dataset):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(SourceError) as e:
        prepare(dataset, missing, tmp_path / "out", quiet=True)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dataset,layout", [
    ("fashion_mnist", "train-images-idx3-ubyte"), ("cifar10", "cifar-10-batches-py"),
    ("cifar100", "cifar-100-python"), ("stl10", "stl10_binary"), ("imagefolder", "train/<class>")])
def test_wrong_layout_names_path_and_layout(tmp_path, dataset, layout):
    (tmp_path / "raw" / "something").mkdir(parents=True)
    with pytest.raises(SourceError) as e:
        prepare(dataset, tmp_path / "raw", tmp_path / "out", quiet=True)
    message = str(e.value)
    assert str(tmp_path / "raw") in message and layout in message and "\n" not in message


def test_cli_round_trip(tmp_path, capsys):
    data = make_fashion_mnist(tmp_path / "raw", n_train=10, n_val=5)
    rc = main(["fashion_mnist", "--src", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
               "--workers", "64"])
    assert rc == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["command"] == (f"python -m data_prep fashion_mnist --src {tmp_path / 'raw'} "
                                   f"--out {tmp_path / 'out'} --workers 64")
    assert manifest["sizes"] == {"train": 10, "val": 5}
    assert "train: 10 images" in capsys.readouterr().out
    check_output(tmp_path / "out", manifest,
                 {s: (gray_to_rgb_padded(x, 32), y) for s, (x, y) in data.items()})


@pytest.mark.parametrize("args,needle", [
    (["cifar10", "--src", "{tmp}/missing"], "{tmp}/missing: no such file"),
    (["imagefolder", "--src", "{tmp}"], "{tmp}/train: no such directory"),
    (["cifar10", "--src", "{tmp}", "--max-resolution", "64"], "only imagefolder is resized"),
    (["stl10", "--src", "{tmp}", "--jpeg-quality", "0"], "jpeg_quality=0"),
])
def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, args, needle):
    args = [a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "out")]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert needle.format(tmp=tmp_path) in captured.err and captured.out == ""
    assert not (tmp_path / "out").exists()


def test_cli_subprocess_exit_code(tmp_path):
    missing = tmp_path / "missing"
    proc = subprocess.run([sys.executable, "-m", "data_prep", "stl10", "--src", str(missing),
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {missing}: no such file")
    assert proc.stderr.count("\n") == 1


def test_option_errors():
    with pytest.raises(OptionError, match="unknown dataset 'mnist'; known: fashion_mnist"):
        prepare("mnist", "/x", "/y")
    with pytest.raises(OptionError, match="only stl10"):
        prepare("cifar10", "/x", "/y", unlabeled=True)


# ------------------------------------------------------------------------------ real data


@pytest.mark.slow   # all 70,000 images; the fast suite's data_prep tests write small files of the same format
@pytest.mark.skipif(not fashion_mnist_present(REAL_FMNIST), reason="no Fashion-MNIST in /usr/share")
def test_real_fashion_mnist(tmp_path):
    manifest = prepare("fashion_mnist", REAL_FMNIST, tmp_path, workers=2, quiet=True)
    assert manifest["sizes"] == {"train": 60_000, "val": 10_000}
    assert sorted(os.listdir(tmp_path)) == [".lock", "manifest.json", "train.beton", "val.beton"]
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        gray, labels = read_fashion_mnist(REAL_FMNIST, split)
        reader = BetonReader(tmp_path / f"{split}.beton")
        np.testing.assert_array_equal(reader.labels, labels)
        np.testing.assert_array_equal(reader.indices, np.arange(len(labels)))
        pick = rng.choice(len(labels), 300, replace=False)
        np.testing.assert_array_equal(np.stack([reader.image(i) for i in pick]),
                                      gray_to_rgb_padded(gray[pick], 32))
        if split == "train":  # padded 32x32: 784 real pixels of 1024 per image
            n = gray.size / 784 * 1024
            s1 = np.sum(gray, dtype=np.int64)
            s2 = np.sum(gray.astype(np.int64) ** 2)
            mean = s1 / n / 255
            std = np.sqrt(s2 / n / 255**2 - mean**2)
            np.testing.assert_allclose(manifest["mean"], [mean] * 3, atol=1e-9)
            np.testing.assert_allclose(manifest["std"], [std] * 3, atol=1e-9)


# ------------------------------------------------------------------------------ betons for mpcl

def test_missing_betons_are_written_in_process_once(tmp_path):
    """data_prep.prepare_if_missing (what a run calls on a fresh checkout, in its own process):
    it writes what the reader then reads, once, and a bad source is data_prep's one-line error."""
    from data_prep import prepare_if_missing

    folder, data, _ = make_cifar(tmp_path / "raw", "cifar10")
    said = []
    assert prepare_if_missing("cifar10", folder, tmp_path / "out", said.append)
    assert said == []                                  # nobody else was writing: nothing to wait for
    reader = BetonReader(tmp_path / "out" / "train.beton")
    assert len(reader) == len(data["train"][1]) and np.array_equal(reader[3][0], data["train"][0][3])
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["dataset"] == "cifar10"
    assert not prepare_if_missing("cifar10", folder, tmp_path / "out", said.append)

    with pytest.raises(SourceError) as e:
        prepare_if_missing("cifar10", tmp_path / "nowhere", tmp_path / "out2")
    assert "\n" not in str(e.value) and str(tmp_path / "nowhere") in str(e.value)
    assert not (tmp_path / "out2").exists()
