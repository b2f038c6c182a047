"""data_prep: image-folder inputs it cannot take as they are, and output files that stay safe
when a writer dies."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers.data import check_output, make_fashion_mnist, save, smooth_images
from data_prep import SourceError, WriteError, prepare
from mpcl.data.sources import gray_to_rgb_padded


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
    order = list(range(0, 18, 2)) + list(range(1, 18, 2))   # cat, then dog
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


def test_temp_files_of_writers_that_died_are_removed(tmp_path, capsys):
    """Temporary files of writers that died (SIGKILL), on this host or another, go at the next
    run: that run holds the folder's lock, so no writer of the folder is alive."""
    from data_prep.outputs import temp_name

    data = make_fashion_mnist(tmp_path / "raw", n_train=10, n_val=5)
    out = tmp_path / "out"
    out.mkdir()
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    victim.kill()
    victim.wait()
    left = [out / temp_name("train.beton", victim.pid), out / temp_name("manifest.json", victim.pid),
            out / f".val.beton.some-other-host.{victim.pid}.tmp"]
    for p in left:
        p.write_bytes(b"partial")
    unrelated = out / "notes.txt"
    unrelated.write_text("mine")
    manifest = prepare("fashion_mnist", tmp_path / "raw", out)
    assert not any(p.exists() for p in left)
    assert unrelated.read_text() == "mine"
    assert ("removed 3 temporary file(s) left by data_prep runs that died: "
            + ", ".join(p.name for p in sorted(left))) in capsys.readouterr().out
    unrelated.unlink()
    check_output(out, manifest, {s: (gray_to_rgb_padded(x, 32), y) for s, (x, y) in data.items()})


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
