"""mpcl.data.sources: the raw-format readers, on small files in the official layouts."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from tests.helpers.data import make_cifar, make_fashion_mnist, make_stl10, save, smooth_images, tar_gz
from mpcl.data.sources import (STL10_CLASSES, BadImageError, SourceError, cifar_classes,
                               gray_to_rgb_padded, list_image_folder, load_rgb, read_cifar,
                               read_fashion_mnist, read_stl10, stl10_classes)

# ------------------------------------------------------------------------------ fashion


def test_fashion_mnist_reads_back(tmp_path):
    data = make_fashion_mnist(tmp_path)
    for split in ("train", "val"):
        x, y = read_fashion_mnist(tmp_path, split)
        np.testing.assert_array_equal(x, data[split][0])
        np.testing.assert_array_equal(y, data[split][1])


def test_gray_to_rgb_padded_keeps_pixels():
    gray = np.arange(2 * 28 * 28, dtype=np.uint64).reshape(2, 28, 28).astype(np.uint8)
    rgb = gray_to_rgb_padded(gray, 32)
    assert rgb.shape == (2, 32, 32, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, 2:30, 2:30, c], gray)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not rgb[:, border].any()


# ------------------------------------------------------------------------------ cifar


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_folder_parent_and_tar(tmp_path, variant):
    folder, data, classes = make_cifar(tmp_path / "raw", variant)
    archive = tar_gz(folder, tmp_path / f"{variant}.tar.gz")
    for src in (folder, folder.parent, archive):
        assert cifar_classes(src, variant) == classes
        for split in ("train", "val"):
            x, y = read_cifar(src, split, variant)
            assert x.shape == (len(data[split][1]), 32, 32, 3) and x.dtype == np.uint8
            np.testing.assert_array_equal(x, data[split][0])
            np.testing.assert_array_equal(y, data[split][1])


def test_cifar_parent_folder_holding_the_archive(tmp_path):
    folder, data, _ = make_cifar(tmp_path / "raw", protocol=pickle.HIGHEST_PROTOCOL)
    holder = tmp_path / "downloads"
    holder.mkdir()
    tar_gz(folder, holder / "cifar-10-python.tar.gz")
    x, _ = read_cifar(holder, "val")
    np.testing.assert_array_equal(x, data["val"][0])


def test_cifar_wrong_layout_names_path_and_layout(tmp_path):
    folder, _, _ = make_cifar(tmp_path / "raw", "cifar100")
    with pytest.raises(SourceError, match="cifar-10-batches-py") as e:
        read_cifar(folder, "train", "cifar10")            # a CIFAR-100 folder given as CIFAR-10
    assert str(folder) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SourceError, match="no such file"):
        read_cifar(tmp_path / "missing", "train")
    (folder / "train").unlink()
    with pytest.raises(SourceError, match="missing train"):
        read_cifar(folder, "train", "cifar100")


def test_cifar_truncated_archive(tmp_path):
    folder, _, _ = make_cifar(tmp_path / "raw")
    archive = tar_gz(folder, tmp_path / "cifar-10-python.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(SourceError, match=str(archive)):
        read_cifar(archive, "val")


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder, _, _ = make_cifar(tmp_path / "raw")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(SourceError, match="not allowed"):
        read_cifar(folder, "val")


# ------------------------------------------------------------------------------ stl10


def test_stl10_column_major_transpose_and_labels(tmp_path):
    folder, data = make_stl10(tmp_path, n_unlabeled=3)
    for split in ("train", "val", "unlabeled"):
        x, y = read_stl10(tmp_path, split)
        assert x.shape == (len(y), 96, 96, 3)
        np.testing.assert_array_equal(x, data[split][0])
        np.testing.assert_array_equal(y, data[split][1])
    x, _ = read_stl10(folder, "train")
    assert (x[:, :10, :30] == 255).all()               # the bar is top-left, right way up
    assert not (x[:, :30, :10] == 255).all()
    assert stl10_classes(folder) == list(STL10_CLASSES)   # no class_names.txt
    make_stl10(tmp_path, class_names=[f"c{i}" for i in range(10)])
    assert stl10_classes(tmp_path) == [f"c{i}" for i in range(10)]


def test_stl10_errors(tmp_path):
    with pytest.raises(SourceError, match="train_X.bin"):
        read_stl10(tmp_path, "train")
    folder, _ = make_stl10(tmp_path)
    with pytest.raises(SourceError, match="unlabeled_X.bin"):
        read_stl10(folder, "unlabeled")
    with open(folder / "test_X.bin", "ab") as f:
        f.write(b"\0" * 100)
    with pytest.raises(SourceError, match="truncated"):
        read_stl10(folder, "val")
    (folder / "train_y.bin").write_bytes(b"\x01\x02")
    with pytest.raises(SourceError, match="2 labels for 8 images"):
        read_stl10(folder, "train")


# ------------------------------------------------------------------------------ image folders


def test_list_image_folder(tmp_path):
    img = smooth_images(1, 8, 8)[0]
    for rel in ["train/b/2.png", "train/b/1.png", "train/a/x.jpg", "train/a/sub/y.png",
                "train/.ipynb_checkpoints/z.png", "val/b/v.png"]:
        save(tmp_path / rel, img)
    samples, classes, not_followed = list_image_folder(tmp_path, "train")
    assert classes == ["a", "b"] and not_followed == []
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in samples] == [
        ("train/a/x.jpg", 0), ("train/a/sub/y.png", 0), ("train/b/1.png", 1), ("train/b/2.png", 1)]
    val, _, _ = list_image_folder(tmp_path, "val", classes)
    assert [(p.name, y) for p, y in val] == [("v.png", 1)]
    save(tmp_path / "val/c/w.png", img)
    with pytest.raises(SourceError, match="not in train/: c"):
        list_image_folder(tmp_path, "val", classes)


def test_list_image_folder_follows_each_real_folder_once(tmp_path):
    """Links to outside folders are followed; loops, links to the split or to another class
    and a class folder aliasing another are not, and are named with the reason."""
    img = smooth_images(1, 8, 8)[0]
    for rel in ["train/cat/c.png", "train/dog/d.png", "train/dog/sub/e.png", "extra/x.png"]:
        save(tmp_path / rel, img)
    (tmp_path / "train/dog/loop").symlink_to("..")
    (tmp_path / "train/dog/sub/up").symlink_to("..")
    (tmp_path / "train/dog/cats").symlink_to("../cat")
    (tmp_path / "train/dog/more").symlink_to(tmp_path / "extra")
    (tmp_path / "train/zcat").symlink_to("cat")
    samples, classes, not_followed = list_image_folder(tmp_path, "train")
    assert classes == ["cat", "dog", "zcat"]
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in samples] == [
        ("train/cat/c.png", 0), ("train/dog/d.png", 1), ("train/dog/more/x.png", 1),
        ("train/dog/sub/e.png", 1)]
    assert {(p.relative_to(tmp_path).as_posix(), why) for p, why in not_followed} == {
        ("train/dog/cats", "link to train/cat, a folder already listed"),
        ("train/dog/loop", "link to train, a folder already listed"),
        ("train/dog/sub/up", "link to train/dog, a folder already listed"),
        ("train/zcat", "same folder as train/cat (listed there)")}


def test_list_image_folder_errors(tmp_path):
    with pytest.raises(SourceError, match=f"{tmp_path / 'nope'}: no such directory"):
        list_image_folder(tmp_path / "nope", "train")
    with pytest.raises(SourceError, match="train: no such directory"):
        list_image_folder(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(SourceError, match="train: it holds no files"):   # neither classes nor images
        list_image_folder(tmp_path, "train")
    (tmp_path / "val" / "cat").mkdir(parents=True)
    with pytest.raises(SourceError, match="class folders .cat. but train/ has none"):
        list_image_folder(tmp_path, "val", [])
    (tmp_path / "train" / "empty_class").mkdir()
    with pytest.raises(SourceError, match="hold no files"):
        list_image_folder(tmp_path, "train")


def test_list_image_folder_unlabelled(tmp_path):
    """A split folder without sub-folders: its files, label -1, no classes."""
    for rel in ("train/b.png", "train/a.png", "train/c.png", "val/d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    samples, classes, _ = list_image_folder(tmp_path, "train")
    assert classes == []
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in samples] == [
        ("train/a.png", -1), ("train/b.png", -1), ("train/c.png", -1)]
    val, _, _ = list_image_folder(tmp_path, "val", classes)
    assert [(p.name, y) for p, y in val] == [("d.png", -1)]


def test_load_rgb_conversions(tmp_path):
    rgb = smooth_images(1, 12, 10)[0]
    image, mode = load_rgb(save(tmp_path / "rgb.png", rgb))
    assert mode is None and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), rgb)

    gray = rgb[..., 0]
    image, mode = load_rgb(save(tmp_path / "gray.png", gray))
    assert mode == "L"
    np.testing.assert_array_equal(np.asarray(image), np.repeat(gray[..., None], 3, axis=2))

    for name, target in (("cmyk.jpg", "CMYK"), ("pal.png", "P"), ("la.png", "LA")):
        path = save(tmp_path / name, rgb, mode=target)
        image, mode = load_rgb(path)
        assert mode == target and image.mode == "RGB" and image.size == (10, 12)

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 64, np.uint8)])
    rgba[0, 0, 3] = 0
    rgba[0, 1, 3] = 255
    image, mode = load_rgb(save(tmp_path / "rgba.png", rgba))
    assert mode == "RGBA"
    out = np.asarray(image).astype(int)
    assert (out[0, 0] == 255).all()                       # transparent -> white
    np.testing.assert_array_equal(out[0, 1], rgb[0, 1])   # opaque -> unchanged
    expected = (rgb.astype(int) * 64 + 255 * (255 - 64) + 127) // 255
    assert np.abs(out[1:] - expected[1:]).max() <= 1      # composited on white


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello, not an image\n", "not an image"),
    ("truncated", "unreadable image"),
])
def test_load_rgb_bad_files(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        buf = io.BytesIO()
        Image.fromarray(smooth_images(1, 64, 64)[0]).save(buf, format="JPEG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=reason):
        load_rgb(path)
