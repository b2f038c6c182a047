"""The FFCV loaders on small synthetic CIFAR-10 .beton files (CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")
# numba's dispatcher finalizers raise KeyError when ffcv's per-loader compiled code is
# garbage-collected (numba 0.68 + ffcv 1.0.2); harmless, reported as unraisable
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

from tests.helpers.data import make_cifar  # noqa: E402

from mpcl.config.compose import load  # noqa: E402
from mpcl.data.loaders import build_loaders  # noqa: E402
from mpcl.data.sources import SourceError  # noqa: E402

N_PER_BATCH = 40          # 5 batches -> 200 training samples, 40 validation samples
N_TRAIN, N_VAL = 5 * N_PER_BATCH, N_PER_BATCH
BATCH = 32
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    """(beton dir, source data) for a synthetic CIFAR-10 written by data_prep."""
    from data_prep import prepare

    tmp = tmp_path_factory.mktemp("ffcv")
    _, data, _ = make_cifar(tmp / "raw", "cifar10", n_per_batch=N_PER_BATCH)
    prepare("cifar10", tmp / "raw", tmp / "out", workers=1, quiet=True)
    return tmp / "out", data


def _cfg(path, *extra):
    return load(None, ["data.loader=ffcv", "data.dataset=cifar10", f"data.path={path}",
                       f"data.batch_size={BATCH}", "data.num_workers=1", *extra])


@pytest.fixture(scope="module")
def loaders(betons):
    return build_loaders(_cfg(betons[0]), 0, 1, CPU)


def _epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return list(loader)


def test_training_batch_two_views_labels_and_indices(loaders, betons):
    _, data = betons
    train_x, train_y = data["train"]
    assert loaders.num_train == N_TRAIN and len(loaders.train) == N_TRAIN // BATCH
    batches = _epoch(loaders.train)
    assert len(batches) == N_TRAIN // BATCH
    for b in batches:
        assert len(b.views) == 2
        for v in b.views:
            assert v.shape == (BATCH, 3, 32, 32) and v.dtype == torch.float32 and v.device == CPU
            assert v.min() >= 0.0 and v.max() <= 1.0
        assert not torch.equal(b.views[0], b.views[1])
        assert b.index.dtype == torch.int64 and b.label.dtype == torch.int64
        # index i's label is the source label of sample i
        assert torch.equal(b.label, torch.from_numpy(train_y)[b.index])
    seen = torch.cat([b.index for b in batches])
    assert len(set(seen.tolist())) == len(seen) == (N_TRAIN // BATCH) * BATCH  # drop_last
    assert seen.min() >= 0 and seen.max() < N_TRAIN


@pytest.mark.slow
def test_views_come_from_the_source_image(loaders, betons):
    """With no colour ops a full-scale crop of a sample is close to the sample (up to the
    crop box, the resize and the flip): compare per-sample mean colour."""
    _, data = betons
    train_x = torch.from_numpy(data["train"][0]).permute(0, 3, 1, 2).float() / 255
    cfg = _cfg(betons[0], "data.jitter_prob=0", "data.grayscale_prob=0", "data.crop_scale_min=1.0")
    b = next(iter(build_loaders(cfg, 0, 1, CPU).train))
    src_mean = train_x[b.index].mean(dim=(2, 3))
    assert (b.views[0].mean(dim=(2, 3)) - src_mean).abs().max() < 0.15


def test_epochs_replay_their_order(loaders):
    first = torch.cat([b.index for b in _epoch(loaders.train, 3)])
    other = torch.cat([b.index for b in _epoch(loaders.train, 4)])
    again = torch.cat([b.index for b in _epoch(loaders.train, 3)])
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_eval_loaders_yield_every_sample_once_in_order(loaders, betons):
    _, data = betons
    for loader, (x, y) in ((loaders.val, data["val"]), (loaders.train_eval, data["train"])):
        images, labels = zip(*loader)
        images, labels = torch.cat(images), torch.cat(labels)
        assert images.dtype == torch.float32 and images.shape == (len(y), 3, 32, 32)
        assert torch.equal(labels, torch.from_numpy(y))
        expected = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
        assert torch.allclose(images, expected)


def test_val_pairs_are_fixed(loaders):
    a = [b.views[0] for b in loaders.val_pairs]
    b = [b.views[0] for b in loaders.val_pairs]
    assert len(a) == 1 and a[0].shape == (N_VAL, 3, 32, 32) and torch.equal(a[0], b[0])


@pytest.mark.slow
def test_subset_limits_indices(betons):
    ls = build_loaders(_cfg(betons[0], "data.subset=64", "data.val_subset=10"), 0, 1, CPU)
    assert ls.num_train == 64 and len(ls.train) == 2
    idx = torch.cat([b.index for b in _epoch(ls.train)])
    assert sorted(idx.tolist()) == list(range(64))
    assert sum(len(y) for _, y in ls.val) == 10
    assert sum(len(y) for _, y in ls.train_eval) == 64


def _rank_main(rank: int, world: int, beton_dir: str, rendezvous: str, out_dir: str) -> None:
    """One process of a gloo group: its loaders from the process group's rank and size."""
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        ls = build_loaders(_cfg(beton_dir), dist.get_rank(), dist.get_world_size(), CPU)
        epochs = {}
        for epoch in (1, 2):
            ls.train.set_epoch(epoch)
            epochs[epoch] = [b.index.tolist() for b in ls.train]
        val_labels = torch.cat([y for _, y in ls.val]).tolist()
        gathered = [None] * world
        dist.all_gather_object(gathered, {"epochs": epochs, "val": val_labels, "len": len(ls.train)})
        if rank == 0:
            Path(out_dir, "shards.json").write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_see_disjoint_shards_covering_the_epoch(betons, tmp_path):
    """Two processes in a gloo process group (as under Ray Train or torchrun on CPU): per
    epoch their training shards are disjoint, full batches, and cover all but the dropped
    remainder; each epoch reshuffles; validation yields every sample once over the ranks."""
    import json

    import torch.multiprocessing as mp

    world = 2
    mp.start_processes(_rank_main, args=(world, str(betons[0]), str(tmp_path / "rendezvous"), str(tmp_path)),
                       nprocs=world, start_method="spawn")
    ranks = json.loads((tmp_path / "shards.json").read_text())
    local = BATCH // world
    per_rank = N_TRAIN // world // local * local
    for epoch in ("1", "2"):
        shards = []
        for r in ranks:
            assert r["len"] == per_rank // local
            assert all(len(batch) == local for batch in r["epochs"][epoch])
            shards.append({i for batch in r["epochs"][epoch] for i in batch})
        assert not shards[0] & shards[1], epoch
        assert len(shards[0] | shards[1]) == world * per_rank
        assert shards[0] | shards[1] <= set(range(N_TRAIN))
    assert ranks[0]["epochs"]["1"] != ranks[0]["epochs"]["2"]
    _, data = betons
    assert sorted(ranks[0]["val"] + ranks[1]["val"]) == sorted(data["val"][1].tolist())


def test_missing_beton_names_path_and_command(tmp_path):
    with pytest.raises(SourceError) as e:
        build_loaders(_cfg(tmp_path / "nowhere"), 0, 1, CPU)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "nowhere" / "train.beton") in msg
    assert f"python -m data_prep cifar10 --src data/raw/cifar-10-batches-py --out {tmp_path / 'nowhere'}" in msg


def test_missing_beton_for_imagenet100_uses_imagefolder(tmp_path):
    cfg = load(None, ["data.loader=ffcv", "data.dataset=imagenet100", f"data.path={tmp_path}"])
    with pytest.raises(SourceError, match="python -m data_prep imagefolder --src"):
        build_loaders(cfg, 0, 1, CPU)


def test_beton_without_index_field_is_a_one_line_error(tmp_path, betons):
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    class Two(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return np.full((32, 32, 3), i, dtype=np.uint8), i

    for split in ("train", "val"):
        DatasetWriter(str(tmp_path / f"{split}.beton"), {"image": RGBImageField(), "label": IntField()},
                      num_workers=1).from_indexed_dataset(Two())
    with pytest.raises(SourceError) as e:
        build_loaders(_cfg(tmp_path), 0, 1, CPU)
    msg = str(e.value)
    assert "\n" not in msg and "'index'" in msg and str(tmp_path / "train.beton") in msg


@pytest.mark.slow
def test_bench_loader_cli_writes_benchmarks(betons, tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    from mpcl import cli

    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nother notes stay\n")
    argv = ["bench", "loader", "--dataset", "cifar10", "--data-dir", str(betons[0]), "--samples", "64",
            "--batch-size", "32", "--epochs", "2", "--workers", "1", "--device", "cpu",
            "--record", str(out), "--out", str(tmp_path / "bench")]
    cli.main(argv)
    printed = capsys.readouterr().out
    assert "ratio:" in printed
    text = out.read_text()
    assert "other notes stay" in text and "ratio FFCV / reference" in text and "ffcv 1.0.2" in text
    cli.main(argv)  # a second run replaces the section
    assert out.read_text().count("ratio FFCV / reference") == 1


@pytest.mark.slow
def test_train_cli_reads_betons(betons, tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    from mpcl import cli
    from tests.helpers.runs import tiny_overrides

    out = tmp_path / "run"
    cli.main(["train", "--no-ray", *tiny_overrides(out, "simclr", **{
        "data.loader": "ffcv", "data.dataset": "cifar10", "data.path": betons[0], "data.subset": 128,
        "data.val_subset": N_VAL, "data.batch_size": BATCH, "data.num_workers": 1, "train.epochs": 4,
        "train.eval_every": 4})])
    assert "val/knn_top1" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    # training on the betons helped: over 4 epochs of 4 steps the loss fell 0.15-0.23 in every
    # run measured, while one epoch to the next moves by the noise of the loader's order (+-0.05)
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
