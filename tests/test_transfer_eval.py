"""``run.py eval RUN`` on another dataset (transfer) and with ``--finetune``: the encoder a run
trained, measured on data with other classes, and trained end to end with a new head."""

from __future__ import annotations

import json
import pickle
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from mpcl import cli
from mpcl.config import to_dict
from mpcl.config.compose import from_dict, load
from mpcl.data import loaders as data_loaders
from mpcl.data.datasets import get_dataset
from mpcl.methods import build_method
from tests.helpers.runs import tiny_overrides


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, fmnist_path) -> Path:
    """A finished one-epoch tiny SimCLR run on Fashion-MNIST (512 training, 256 validation samples)."""
    out = tmp_path_factory.mktemp("transfer") / "run"
    cli.main(["train", "--no-ray", *tiny_overrides(out, "simclr", **{"data.path": fmnist_path})])
    return out


def _eval(capsys, *argv: str) -> dict:
    capsys.readouterr()
    cli.main(["eval", *argv])
    return json.loads(capsys.readouterr().out)


def _fails(capsys, *argv: str) -> str:
    """The one stderr line of an eval that exits with 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _as_cifar100(root: Path, fmnist_path: str, n_train: int, n_val: int) -> Path:
    """The first Fashion-MNIST images (as mpcl feeds them: 32x32 RGB) in CIFAR-100's layout,
    class c renamed 11 * c: a 100-class dataset whose images the run's encoder has seen."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, name, n in (("train", "train", n_train), ("val", "test", n_val)):
        x, y = data_loaders.load_arrays(get_dataset("fashion_mnist"), fmnist_path, split)
        batch = {b"data": x[:n].transpose(0, 3, 1, 2).reshape(n, 3072), b"fine_labels": (y[:n] * 11).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}))
    return root


@pytest.mark.slow
def test_another_dataset_with_other_classes_is_measured_with_the_trained_encoder(trained_run, tmp_path,
                                                                                 fmnist_path, capsys):
    own = _eval(capsys, str(trained_run), "--linear-epochs", "5")     # the run directory: its last checkpoint
    data = _as_cifar100(tmp_path / "c100", fmnist_path, 512, 256)
    other = _eval(capsys, str(trained_run), "--linear-epochs", "5", "data.dataset=cifar100", f"data.path={data}")
    assert own["dataset"] == {"name": "fashion_mnist", "path": fmnist_path, "num_classes": 10,
                              "train_size": 512, "val_size": 256, "same_as_training": True}
    assert other["dataset"] == {"name": "cifar100", "path": str(data), "num_classes": 100,
                                "train_size": 512, "val_size": 256, "same_as_training": False}
    assert other["checkpoint"] == str(trained_run / "checkpoints" / "last.pt")
    # the same images under renamed classes: the same neighbours vote, so the trained encoder
    # (and only it: a freshly initialised one has other features) gives the same kNN top-1
    assert other["knn_top1"] == own["knn_top1"]
    assert 25 < other["linear_top1"] <= 100              # a 100-way probe; the majority class is < 15 %
    # the run's 10-class online probe belongs to its own dataset only
    assert "online_top1" in own and "online_top1" not in other


@pytest.mark.slow
def test_finetune_trains_the_head_and_reports_each_epoch(trained_run, capsys):
    result = _eval(capsys, str(trained_run), "--linear-epochs", "1", "--finetune", "--finetune-epochs", "2",
                   "data.batch_size=32", "data.crop_scale_min=0.5")
    losses = result["finetune_train_loss"]
    assert len(losses) == 2 and losses[1] < losses[0] < 2.5
    assert result["finetune_top1"] > 20                  # a fresh head: ~10 %; the majority class < 15 %


@pytest.mark.slow
def test_finetune_trains_every_layer_of_the_encoder(trained_run):
    from mpcl.engine.checkpoint import load as load_checkpoint
    from mpcl.engine.finetune import finetune
    from mpcl.engine.runtime import build, runtime

    state = load_checkpoint(trained_run / "checkpoints" / "last.pt")
    cfg = from_dict(state["config"], ["model.weights=", "data.batch_size=64"])
    rt = runtime(cfg)
    loaders = data_loaders.build_loaders(cfg, 0, 1, rt.device)
    method, _ = build(cfg, rt, loaders)
    method.load_state_dict(state["model"])
    method.eval()
    before = {k: v.clone() for k, v in method.encoder().state_dict().items()}
    result = finetune(method, cfg, rt, loaders.val, 10, 1)
    after = method.encoder().state_dict()
    unchanged = [k for k, v in before.items() if v.is_floating_point() and torch.equal(v, after[k])]
    assert unchanged == []       # every weight (gradients reached the first layer) and BN statistic
    assert len(result["finetune_train_loss"]) == 1


def _random_checkpoint(root: Path, fmnist_path: str) -> Path:
    """A checkpoint of an untrained tiny SimCLR, as a run directory holds it."""
    cfg = load(None, tiny_overrides(root, "simclr", **{"data.path": fmnist_path}))
    (root / "checkpoints").mkdir(parents=True)
    path = root / "checkpoints" / "last.pt"
    torch.save({"model": build_method(cfg, 10, 512).state_dict(), "epoch": 0, "config": to_dict(cfg)}, path)
    return path


def test_data_without_labels_is_one_line(tmp_path, fmnist_path, capsys, monkeypatch):
    _random_checkpoint(tmp_path / "run", fmnist_path)
    read = data_loaders.load_arrays

    def unlabelled_val(dataset, path, split):   # a validation split read as unlabelled data (-1)
        images, labels = read(dataset, path, split)
        return images, labels * 0 - 1 if split == "val" else labels

    monkeypatch.setattr(data_loaders, "load_arrays", unlabelled_val)
    err = _fails(capsys, str(tmp_path / "run"), "--linear-epochs", "1")
    assert err == f"error: no labelled split in {fmnist_path}: kNN and the probes need labels"


def test_a_run_without_a_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert "RUN " + str(tmp_path / "run") + ": no checkpoint" in _fails(capsys, str(tmp_path / "run"))


def test_eval_usage_errors_are_one_line(tmp_path, capsys):
    assert "eval takes one RUN" in _fails(capsys, "a", "b")
    assert "eval takes one RUN" in _fails(capsys, "data.path=/x")
    assert "--finetune-epochs 0: must be at least 1" in _fails(capsys, "r", "--finetune", "--finetune-epochs", "0")


@pytest.mark.parametrize(("argv", "run", "overrides"), [
    (["runs/r", "data.path=/x", "data.dataset=cifar100"], "runs/r", ["data.path=/x", "data.dataset=cifar100"]),
    (["data.path=/x", "runs/r"], "runs/r", ["data.path=/x"]),
    (["--checkpoint", "s3://b/state.pt", "data.path=/x"], "s3://b/state.pt", ["data.path=/x"]),
    (["runs/a=b/last.pt", "out=/o"], "runs/a=b/last.pt", ["out=/o"]),   # '=' inside a path
])
def test_eval_reads_run_and_overrides_in_any_order(argv, run, overrides, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(cli, "cmd_eval", lambda args: seen.update(vars(args)))
    cli.main(["eval", *argv])
    assert cli.eval_target(Namespace(**seen)) == (run, overrides)
