"""data_prep: raw dataset -> .beton round trips, bad inputs, errors and the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _fixtures_data import make_cifar, make_fashion_mnist, make_stl10, save, smooth_images, tar_gz
from data_prep import OptionError, SourceError, WriteError, prepare
from data_prep.__main__ import main
from mpcl.data.betons import BetonReader
from mpcl.data.sources import (FASHION_MNIST_CLASSES, fashion_mnist_present, gray_to_rgb_padded,
                               read_fashion_mnist)

REPO = Path(__file__).resolve().parents[1]
REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def check_output(out: Path, manifest: dict, expected: dict, atol: float = 0.0) -> dict:
    """The folder holds exactly the manifest's files; every split reads back as ``expected``
    (split -> (images, labels)); checksums, sizes and train mean/std are right."""
    files = manifest["files"]
    assert sorted(os.listdir(out)) == sorted([*files.values(), "manifest.json"])  # no temp files
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert set(files) == set(expected) and manifest["sizes"] == {
        s: len(y) for s, (_, y) in expected.items()}
    readers = {}
    for split, (images, labels) in expected.items():
        path = out / files[split]
        assert manifest["sha256"][path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert manifest["bytes"][path.name] == path.stat().st_size
        reader = readers[split] = BetonReader(path)
        assert len(reader) == len(labels)
        np.testing.assert_array_equal(reader.indices, np.arange(len(labels)))
        np.testing.assert_array_equal(reader.labels, labels)
        for i, want in enumerate(images):
            got = reader.image(i)
            assert got.shape == want.shape, (split, i)
            if atol == 0:
                np.testing.assert_array_equal(got, want, err_msg=f"{split}[{i}]")
            else:
                assert np.abs(got.astype(int) - want).mean() <= atol, (split, i)
    return readers


def check_stats(manifest: dict, train_images) -> None:
    pixels = np.concatenate([np.asarray(im, np.float64).reshape(-1, 3) for im in train_images])
    pixels /= 255
    np.testing.assert_allclose(manifest["mean"], pixels.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(manifest["std"], pixels.std(axis=0), atol=1e-9)


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


# ------------------------------------------------------------------------------ bad inputs


def test_imagefolder_bad_inputs(tmp_path, capsys):
    """Convertible modes are converted, unusable files skipped and listed; raw storage, so
    every kept image is compared exactly."""
    src = tmp_path / "raw"
    rgb = smooth_images(8, 30, 40)
    save(src / "train/cat/a_rgb.jpg", rgb[0])
    save(src / "train/cat/b_rgb.png", rgb[1][:20])
    save(src / "train/cat/c_gray.png", rgb[2], mode="L")
    save(src / "train/cat/d_cmyk.jpg", rgb[3], mode="CMYK")
    save(src / "train/cat/e_pal.png", rgb[4], mode="P")
    rgba = np.dstack([rgb[5], np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))])
    save(src / "train/cat/f_rgba.png", rgba)
    (src / "train/cat/g_empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rgb[6]).save(buf, format="JPEG")
    (src / "train/cat/h_truncated.jpg").write_bytes(buf.getvalue()[:300])
    (src / "train/cat/notes.txt").write_text("not an image\n")
    save(src / "train/dog/a.png", rgb[7], mode="LA")
    save(src / "val/dog/v.png", rgb[0])
    (src / "val/dog/w.png").write_bytes(b"")

    manifest = prepare("imagefolder", src, tmp_path / "out", write_mode="raw", quiet=False)

    def converted(name):
        return np.asarray(Image.open(src / name).convert("RGB"))

    alpha = rgba[..., 3:].astype(int)
    on_white = (rgba[..., :3].astype(int) * alpha + 255 * (255 - alpha) + 127) // 255
    grey = np.asarray(Image.open(src / "train/cat/c_gray.png"))
    train = [converted("train/cat/a_rgb.jpg"), rgb[1][:20], np.repeat(grey[..., None], 3, 2),
             converted("train/cat/d_cmyk.jpg"), converted("train/cat/e_pal.png"), on_white,
             converted("train/dog/a.png")]
    readers = check_output(tmp_path / "out", manifest, {
        "train": (train[:5], np.array([0, 0, 0, 0, 0, 0, 1])),
        "val": ([rgb[0]], np.array([1]))})
    got = readers["train"].image(5).astype(int)
    assert np.abs(got - on_white).max() <= 1                 # RGBA composited on white
    np.testing.assert_array_equal(readers["train"].image(6), train[6])
    assert {(c["file"], c["from"]) for c in manifest["converted"]} == {
        ("train/cat/c_gray.png", "L"), ("train/cat/d_cmyk.jpg", "CMYK"),
        ("train/cat/e_pal.png", "P"), ("train/cat/f_rgba.png", "RGBA"), ("train/dog/a.png", "LA")}
    skipped = {(s["split"], s["file"]): s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {
        ("train", "train/cat/g_empty.jpg"), ("train", "train/cat/h_truncated.jpg"),
        ("train", "train/cat/notes.txt"), ("val", "val/dog/w.png")}
    assert skipped[("train", "train/cat/g_empty.jpg")].startswith("empty file")
    assert skipped[("train", "train/cat/h_truncated.jpg")].startswith("unreadable image")
    assert skipped[("train", "train/cat/notes.txt")].startswith("not an image")
    assert "skipped 4 input(s)" in capsys.readouterr().out


def test_imagefolder_all_bad_is_an_error(tmp_path):
    (tmp_path / "raw/train/cat").mkdir(parents=True)
    (tmp_path / "raw/train/cat/x.jpg").write_bytes(b"")
    save(tmp_path / "raw/val/cat/y.png", smooth_images(1, 8, 8)[0])
    with pytest.raises(SourceError, match="none of the 1 files"):
        prepare("imagefolder", tmp_path / "raw", tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_imagefolder_symlink_loop_stores_each_image_once(tmp_path, capsys):
    """A link back up the tree (train/dog/loop -> ..) is not followed: each image is stored
    once, under its own class, and the link is named in 'skipped'."""
    src = tmp_path / "raw"
    images = smooth_images(18, 8, 8)
    for k, image in enumerate(images):
        save(src / "train" / ("cat", "dog")[k % 2] / f"{k:02d}.png", image)
    save(src / "val/cat/v.png", images[0])
    (src / "train/dog/loop").symlink_to("..")
    manifest = prepare("imagefolder", src, tmp_path / "out", write_mode="raw")
    order = [k for k in range(0, 18, 2)] + [k for k in range(1, 18, 2)]   # cat, then dog
    check_output(tmp_path / "out", manifest, {
        "train": (images[order], np.array([0] * 9 + [1] * 9)), "val": (images[:1], np.array([0]))})
    assert manifest["skipped"] == [{"split": "train", "file": "train/dog/loop",
                                    "reason": "not followed: link to train, a folder already "
                                              "listed"}]
    assert "skipped 1 input(s)" in capsys.readouterr().out


def test_imagefolder_unstorable_image_is_skipped_not_fatal(tmp_path):
    """An image that ffcv cannot store (a side resized to 0 px, a side over 65,535 px) is
    skipped with its reason; the others are written."""
    src = tmp_path / "raw"
    good = smooth_images(3, 20, 30)
    for k, image in enumerate(good):
        save(src / "train/a" / f"{k}.png", image)
    save(src / "train/a/thin.png", np.zeros((5, 9000, 3), np.uint8))
    save(src / "val/a/v.png", good[0])
    manifest = prepare("imagefolder", src, tmp_path / "out", max_resolution=400, quiet=True)
    assert manifest["sizes"] == {"train": 3, "val": 1}
    assert manifest["skipped"] == [{
        "split": "train", "file": "train/a/thin.png",
        "reason": "cannot be stored: 9000x5 px resized to max_resolution 400 leaves a side of "
                  "0 px"}]

    save(src / "val/a/long.png", np.zeros((2, 70_000, 3), np.uint8))
    manifest = prepare("imagefolder", src, tmp_path / "out2", max_resolution=100_000, quiet=True)
    assert manifest["sizes"] == {"train": 4, "val": 1}
    assert manifest["skipped"] == [{
        "split": "val", "file": "val/a/long.png",
        "reason": "cannot be stored: 70000x2 px, sides over 65535 px (lower max_resolution)"}]


def test_imagefolder_16_bit_images_scaled_to_8_bits(tmp_path, capsys):
    """16-bit grey and 16-bit RGB PNGs keep their high byte (mid-grey stays mid-grey, not
    white) and are listed in 'rescaled'; float images (no 8-bit scale) are skipped."""
    import cv2

    src = tmp_path / "raw"
    ramp = (np.arange(6 * 7, dtype=np.uint32).reshape(6, 7) * 1597).astype(np.uint16)
    save(src / "train/a/grey16.png", ramp)
    save(src / "train/a/mid16.png", np.full((6, 7), 32768, np.uint16))
    rgb16 = np.dstack([ramp, 65535 - ramp, np.full_like(ramp, 40000)])
    cv2.imwrite(str(src / "train/a/rgb16.png"), rgb16[..., ::-1])     # OpenCV writes BGR
    save(src / "train/a/float.tif", np.full((6, 7), 0.5, np.float32))
    save(src / "val/a/v.png", smooth_images(1, 6, 7)[0])
    manifest = prepare("imagefolder", src, tmp_path / "out", write_mode="raw")
    expected = [np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, 2),
                np.full((6, 7, 3), 128, np.uint8), (rgb16 >> 8).astype(np.uint8)]
    check_output(tmp_path / "out", manifest, {"train": (expected, np.zeros(3, int)),
                                              "val": (smooth_images(1, 6, 7), np.array([0]))})
    assert manifest["rescaled"] == [
        {"split": "train", "file": "train/a/grey16.png", "from": "I;16"},
        {"split": "train", "file": "train/a/mid16.png", "from": "I;16"},
        {"split": "train", "file": "train/a/rgb16.png", "from": "RGB;16"}]
    assert "v >> 8" in manifest["rescale_note"]
    assert [(s["file"], s["reason"][:20]) for s in manifest["skipped"]] == [
        ("train/a/float.tif", "floating-point pixel")]
    assert "rescaled 3 16-bit image(s) to 8 bits" in capsys.readouterr().out


def test_empty_class_folder_warns_and_is_recorded(tmp_path, capsys):
    """A class folder with no usable image stays a class (labels follow the sorted folder
    names) and is named in a warning and in 'empty_classes'."""
    src = tmp_path / "raw"
    save(src / "train/cat/a.png", smooth_images(1, 8, 8)[0])
    (src / "train/empty").mkdir()
    (src / "train/junk").mkdir()
    (src / "train/junk/readme.txt").write_text("no images here\n")
    save(src / "val/cat/v.png", smooth_images(1, 8, 8)[0])
    (src / "val/junk").mkdir()
    manifest = prepare("imagefolder", src, tmp_path / "out")
    assert manifest["classes"] == ["cat", "empty", "junk"] and manifest["num_classes"] == 3
    assert manifest["empty_classes"] == [
        {"split": "train", "class": "empty", "label": 1, "folder": "train/empty"},
        {"split": "train", "class": "junk", "label": 2, "folder": "train/junk"},
        {"split": "val", "class": "junk", "label": 2, "folder": "val/junk"}]
    warnings = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("warning:")]
    assert warnings == [
        f"warning: {src}/train/empty: no usable image; class 'empty' (label 1) is kept with 0 "
        "train images (manifest.json 'empty_classes')",
        f"warning: {src}/train/junk: no usable image; class 'junk' (label 2) is kept with 0 "
        "train images (manifest.json 'empty_classes')",
        f"warning: {src}/val/junk: no usable image; class 'junk' (label 2) is kept with 0 "
        "val images (manifest.json 'empty_classes')"]


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path, capsys):
    """Temporary files of a writer that died (SIGKILL) go at the next run; those of a writer
    still running, and of writers on other hosts, stay."""
    from data_prep.outputs import temp_name

    data = make_fashion_mnist(tmp_path / "raw", n_train=10, n_val=5)
    out = tmp_path / "out"
    out.mkdir()
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    victim.kill()
    victim.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_files = [out / temp_name("train.beton", victim.pid),
                      out / temp_name("manifest.json", victim.pid)]
        kept = [out / temp_name("train.beton", live.pid),
                out / f".val.beton.some-other-host.{victim.pid}.tmp"]
        for p in dead_files + kept:
            p.write_bytes(b"partial")
        manifest = prepare("fashion_mnist", tmp_path / "raw", out)
        assert not any(p.exists() for p in dead_files)
        assert all(p.read_bytes() == b"partial" for p in kept)
        assert (f"removed 2 temporary file(s) left by data_prep runs that died: "
                f"{dead_files[1].name}, {dead_files[0].name}") in capsys.readouterr().out
        for p in kept:
            p.unlink()
        check_output(out, manifest, {s: (gray_to_rgb_padded(x, 32), y) for s, (x, y) in data.items()})
    finally:
        live.kill()
        live.wait()


@pytest.mark.timeout(120)
def test_failed_write_leaves_previous_output_intact(tmp_path, monkeypatch):
    import data_prep.plan as dp

    src = tmp_path / "raw"
    for k in range(6):
        save(src / "train" / f"c{k % 2}" / f"{k}.png", smooth_images(1, 16, 16, seed=k)[0])
    save(src / "val/c0/v.png", smooth_images(1, 16, 16)[0])
    out = tmp_path / "out"
    before = prepare("imagefolder", src, out, quiet=True)
    listing = {p: (out / p).read_bytes() for p in os.listdir(out)}

    real_getitem = dp.FileDataset.__getitem__

    def failing(self, i):
        if i == 3:
            raise OSError("disk went away")
        return real_getitem(self, i)

    monkeypatch.setattr(dp.FileDataset, "__getitem__", failing)
    with pytest.raises(WriteError, match="worker died"):
        prepare("imagefolder", src, out, workers=2, quiet=True)
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == listing   # untouched, no temps
    assert json.loads((out / "manifest.json").read_text()) == before


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


@pytest.mark.skipif(not fashion_mnist_present(REAL_FMNIST), reason="no Fashion-MNIST in /usr/share")
def test_real_fashion_mnist(tmp_path):
    manifest = prepare("fashion_mnist", REAL_FMNIST, tmp_path, workers=2, quiet=True)
    assert manifest["sizes"] == {"train": 60_000, "val": 10_000}
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "train.beton", "val.beton"]
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

def test_mpcl_has_missing_betons_written_by_data_prep(tmp_path):
    """mpcl.data.betons.write_betons_if_missing runs `python -m data_prep` (the only writer):
    it writes what the reader then reads, once, and a bad source is data_prep's one-line error."""
    import dataclasses

    from mpcl.data.betons import write_betons_if_missing
    from mpcl.data.datasets import get_dataset

    folder, data, _ = make_cifar(tmp_path / "raw", "cifar10")
    spec = dataclasses.replace(get_dataset("cifar10"), raw_path=str(folder))
    said = []
    assert write_betons_if_missing(spec, tmp_path / "out", said.append)
    assert len(said) == 1 and str(folder) in said[0]
    reader = BetonReader(tmp_path / "out" / "train.beton")
    assert len(reader) == len(data["train"][1]) and np.array_equal(reader[3][0], data["train"][0][3])
    assert not write_betons_if_missing(spec, tmp_path / "out", said.append) and len(said) == 1

    missing = dataclasses.replace(spec, raw_path=str(tmp_path / "nowhere"))
    with pytest.raises(SourceError) as e:
        write_betons_if_missing(missing, tmp_path / "out2")
    assert "\n" not in str(e.value) and str(tmp_path / "nowhere") in str(e.value)
    assert not (tmp_path / "out2").exists()
