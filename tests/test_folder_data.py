"""Training on any folder data_prep wrote: its manifest is the dataset (classes, crop, statistics,
labelled or not), with the loaders, methods and Ray as for the named datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep import prepare
from mpcl import cli
from mpcl.config import ConfigError
from mpcl.config.compose import load
from mpcl.data.datasets import dataset_spec
from tests.helpers.data import save, smooth_images
from tests.helpers.runs import tiny_overrides


def _spec(folder: str, **data):
    return dataset_spec(load(None, {"data.dataset": "folder", "data.path": folder,
                                    **{f"data.{k}": v for k, v in data.items()}}).data)


def test_the_manifest_is_the_dataset(small_folder):
    spec = _spec(small_folder)
    assert spec.classes == ("ant", "bee") and spec.num_classes == 2 and spec.labelled
    assert (spec.train_size, spec.val_size) == (8, 4)
    manifest = json.loads((Path(small_folder) / "manifest.json").read_text())
    assert spec.mean == tuple(manifest["mean"]) and spec.std == tuple(manifest["std"])
    # 40x36 images: the crop defaults to the shorter side (a multiple of 8), at most the longer one
    assert (spec.image_size, spec.max_side) == (32, 40)
    assert _spec(small_folder, image_size=40).image_size == 40


@pytest.fixture(scope="module")
def unlabelled_folder(tmp_path_factory) -> str:
    src = tmp_path_factory.mktemp("unlabelled_src")
    for k, image in enumerate(smooth_images(6, 24, 24)):
        save(src / ("train" if k < 4 else "val") / f"{k}.png", image)
    out = tmp_path_factory.mktemp("unlabelled")
    prepare("imagefolder", src, out, quiet=True)
    return str(out)


def test_an_unlabelled_folder_trains_self_supervised_methods_only(unlabelled_folder):
    spec = _spec(unlabelled_folder)
    assert not spec.labelled and spec.num_classes == 0 and spec.image_size == 24
    base = {"data.dataset": "folder", "data.path": unlabelled_folder}
    for method in ("simclr", "simsiam_multi", "moco", "spcl"):
        assert load(None, {**base, "method.name": method}).method.name == method
    refused = [({"method.name": "supcon"}, "method.name=supcon: its positives are the samples of the anchor's class"),
               ({"method.name": "mcl", "method.mode": "supervised"}, "method.mode=supervised trains on the classes"),
               ({"method.name": "spcl", "method.pair_labels": "true"}, "method.pair_labels=true pairs samples"),
               ({"data.min_per_class": 2}, "data.min_per_class=2: groups samples by class")]
    for extra, message in refused:
        with pytest.raises(ConfigError, match=message) as e:
            load(None, {**base, **extra})
        assert "unlabelled" in str(e.value) and "\n" not in str(e.value)


def test_what_cannot_be_a_dataset_is_one_line_naming_it(tmp_path, small_folder):
    base = {"data.dataset": "folder"}
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text(json.dumps({"images": 10}))
    cases = [({}, r"data\.path: empty"),
             ({"data.path": str(tmp_path / "none")}, rf"data\.path={tmp_path / 'none'}: no such directory"),
             ({"data.path": str(tmp_path)}, rf"{tmp_path / 'manifest.json'}: not found"),
             ({"data.path": str(tmp_path / "foreign")}, "not a data_prep manifest"),
             ({"data.path": small_folder, "data.image_size": 48},
              "data.image_size=48: the images of .* are stored at most 40 px"),
             ({"data.dataset": "imagenet"}, r"data\.dataset='imagenet': unknown; allowed: .*folder")]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            load(None, {**base, **extra})
        assert "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:   # the command line: exit 2, before any work
        cli.main(["train", "--no-ray", "data.dataset=folder", f"data.path={tmp_path}", f"out={tmp_path / 'run'}"])
    assert e.value.code == 2 and not (tmp_path / "run").exists()


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["torch", "ffcv"])
def test_a_folder_trains_with_either_loader(loader, fmnist_folder, tmp_path):
    """Fashion-MNIST as 48 px PNG files: the folder's classes reach kNN (far above the 10% of
    labels that do not match their images) and the crop is what was asked."""
    out = tmp_path / "run"
    cli.main(["train", "--no-ray", "--config", "folder_simclr", "--config", "parts/budget/tiny",
              *tiny_overrides(out, "simclr", **{"data.path": fmnist_folder["data"], "data.loader": loader,
                                                "data.image_size": 40, "data.subset": 0, "data.val_subset": 0,
                                                "data.num_workers": 1, "data.blur_prob": 0.0, "train.epochs": 2,
                                                "tracking.wandb": "disabled"})])
    rows = _rows(out)
    assert len(rows) == 2 and rows[-1]["val/knn_top1"] > 35, rows
    saved = load(out / "config.yaml")
    assert saved.data.dataset == "folder" and dataset_spec(saved.data).image_size == 40


@pytest.mark.slow
def test_unlabelled_images_train_and_report_what_needs_no_labels(fmnist_path, tmp_path, capsys):
    from tests.helpers.data import fmnist_image_folder

    images = fmnist_image_folder(fmnist_path, tmp_path / "images", {"train": 20, "val": 10}, size=32,
                                 labelled=False)
    prepare("imagefolder", images, tmp_path / "data", quiet=True)
    out = tmp_path / "run"
    cli.main(["train", "--no-ray", "--config", "folder_simclr", "--config", "parts/budget/tiny",
              *tiny_overrides(out, "simclr", **{"data.path": str(tmp_path / "data"), "data.batch_size": 64,
                                                "train.epochs": 2, "tracking.wandb": "disabled"})])
    rows = _rows(out)
    assert len(rows) == 2 and all("val/knn_top1" not in r and "val/online_top1" not in r for r in rows)
    assert all(r["val/uniform"] < 0 and 0 <= r["val/align"] <= 4 for r in rows)
    assert rows[-1]["train/loss"] < rows[0]["train/loss"], rows
    assert "has no labels: no kNN or probe accuracy" in capsys.readouterr().err


@pytest.mark.ray
def test_a_vit_tiny_trains_on_a_48px_folder_through_ray_with_two_workers(fmnist_folder, local_ray, tmp_path):
    """One epoch through Ray Train with 2 workers, and the loss falls over 3 on the same data."""
    from mpcl.launch import train as launch

    out = tmp_path / "vit"
    cfg = load(["folder_simclr", "parts/backbone/vit_tiny", "parts/budget/tiny"], tiny_overrides(out, "simclr", **{
        "data.path": fmnist_folder["data"], "data.subset": 0, "data.val_subset": 0, "data.batch_size": 64,
        "data.blur_prob": 0.0, "model.backbone": "timm/vit_tiny_patch16_224", "model.patch_size": 8,
        "optim.lr": 1e-3, "optim.warmup_epochs": 0, "train.epochs": 3, "train.eval_every": 3,
        "scale.workers": 2, "scale.cpus_per_worker": 1, "tracking.wandb": "disabled"}))
    assert dataset_spec(cfg.data).image_size == 48
    launch.make_trainer(cfg).fit()
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    losses = [r["train/loss"] for r in rows]
    assert losses[-1] < losses[0] - 0.05, losses
    assert rows[-1]["val/knn_top1"] > 20, rows[-1]


@pytest.fixture(scope="module")
def stl10_with_unlabeled(tmp_path_factory) -> dict[str, str]:
    """STL-10 in its official binary files (16 train, 12 test, 40 unlabeled images) and the
    folder data_prep wrote from them with --unlabeled."""
    from tests.helpers.data import make_stl10

    root = tmp_path_factory.mktemp("stl10")
    raw, _ = make_stl10(root / "raw", n_train=16, n_val=12, n_unlabeled=40)
    prepare("stl10", raw, root / "data", unlabeled=True, quiet=True)
    return {"raw": str(raw), "data": str(root / "data")}


@pytest.mark.parametrize("loader", ["torch", pytest.param("ffcv", marks=pytest.mark.slow)])
def test_the_unlabeled_split_trains_and_the_labelled_one_evaluates(loader, stl10_with_unlabeled, tmp_path):
    """data.train_split=unlabeled: the loss and the per-sample bank run over the 40 unlabelled
    images, kNN over the 16 labelled ones."""
    import torch

    out = tmp_path / "run"
    path = stl10_with_unlabeled["raw" if loader == "torch" else "data"]
    cli.main(["train", "--no-ray", *tiny_overrides(out, "simsiam_multi", **{
        "data.dataset": "stl10", "data.path": path, "data.loader": loader, "data.train_split": "unlabeled",
        "data.image_size": 32, "data.batch_size": 8, "data.num_workers": 1, "method.bank_warmup_epochs": 0,
        "tracking.wandb": "disabled"})])
    (row,) = _rows(out)
    assert 0 <= row["val/knn_top1"] <= 100 and row["step"] == 40 // 8
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["model"]["bank.snapshot"].shape[0] == 40


def test_the_unlabeled_split_is_refused_where_it_cannot_be(stl10_with_unlabeled, small_folder):
    base = {"data.dataset": "stl10", "data.path": stl10_with_unlabeled["raw"], "data.train_split": "unlabeled"}
    with pytest.raises(ConfigError, match="method.name=supcon: .* but data.train_split=unlabeled trains on "
                                          "unlabelled images"):
        load(None, {**base, "method.name": "supcon"})
    for extra in ({"data.dataset": "cifar10"}, {"data.dataset": "folder", "data.path": small_folder}):
        with pytest.raises(ConfigError, match=r"data\.train_split=unlabeled: .* has no such split \(it has train, val"):
            load(None, {**base, **extra})


def test_fine_tuning_a_run_of_the_unlabeled_split_uses_the_labelled_one(stl10_with_unlabeled):
    """The supervised recipe's data: the labelled training split, whatever split the run trained on."""
    from mpcl.engine.finetune import supervised_data

    cfg = load(None, {"data.dataset": "stl10", "data.path": stl10_with_unlabeled["raw"],
                      "data.train_split": "unlabeled", "data.jitter_prob": 0.5})
    data = supervised_data(cfg).data
    assert (data.train_split, data.jitter_prob, data.path) == ("train", 0.0, stl10_with_unlabeled["raw"])
