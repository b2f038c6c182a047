"""The run report's map of the embedding: training keeps a capped, seeded sample of the
validation features (``embedding.npz``) whose rows are the validation samples they name, and
``run.py report`` draws them with openTSNE as ``embedding.png``, one colour per class, or says
in one line which extra it needs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mpcl import cli
from mpcl.engine import embedding
from mpcl.engine.embedding import EMBEDDING_FILE, sample_positions
from mpcl.report import embedding as report_embedding
from tests.helpers.runs import tiny_overrides

CAP = 300   # the training test's cap: below its 512 validation samples, and a map in a second


@pytest.fixture(scope="module")
def run_with_embedding(tmp_path_factory, fmnist_path) -> Path:
    """A finished two-epoch tiny SimCLR run that kept at most CAP validation features."""
    out = tmp_path_factory.mktemp("embedding") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(embedding, "MAX_POINTS", CAP)
        cli.main(["train", "--no-ray", *tiny_overrides(out, "simclr", **{
            "data.path": fmnist_path, "data.subset": 256, "data.val_subset": 512, "data.batch_size": 64,
            "train.epochs": 2, "optim.name": "sgd", "tracking.wandb": "disabled"})])
    return out


def test_the_sample_is_capped_seeded_and_sorted():
    pos = sample_positions(10_000)
    assert len(pos) == embedding.MAX_POINTS == 2000
    assert np.array_equal(pos, np.unique(pos)) and pos[-1] < 10_000 and pos[-1] > 9_000   # spread over all
    assert np.array_equal(pos, sample_positions(10_000))                                 # the same every run
    assert np.array_equal(sample_positions(50), np.arange(50))                           # few: all of them


def _kept_on_two_ranks(rank: int, world: int) -> torch.Tensor:
    """save_embedding on one of two gloo ranks, each holding every other batch of 50 samples
    whose features spell their dataset index; rank 0's file as bytes."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from mpcl.data.tensor_loader import EvalLoader
    from mpcl.metrics import SplitFeatures, extract

    ids = torch.arange(50, dtype=torch.float32)
    loader = EvalLoader(ids.view(50, 1, 1, 1), torch.arange(50) % 7, 8, lambda x: x, torch.device("cpu"), rank, world)
    val_f, val_y = extract(lambda x: torch.cat([x.view(-1, 1) + 1, torch.ones(len(x), 1)], 1), loader, nullcontext)
    written = {}
    embedding.MAX_POINTS = 20
    loaders = SimpleNamespace(val=loader, spec=SimpleNamespace(classes=()))
    embedding.save_embedding(SplitFeatures(val_f, val_y, val_f, val_y), loaders,
                             SimpleNamespace(data=SimpleNamespace(dataset="fashion_mnist")), 3,
                             lambda name, data: written.update({name: data}))
    data = written.get(EMBEDDING_FILE, b"")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


@pytest.mark.slow   # spawns gloo workers
def test_on_two_ranks_rank_0_keeps_each_row_with_its_sample(tmp_path):
    import io

    from tests.helpers.ranks import on_gloo_ranks

    first, second = on_gloo_ranks(_kept_on_two_ranks, tmp_path)
    assert len(second) == 0                                            # only rank 0 writes
    with np.load(io.BytesIO(first.numpy().tobytes())) as z:
        features, labels, index = z["features"].astype(np.float32), z["labels"], z["index"]
        assert int(z["epoch"]) == 3
    assert len(index) == 20 and len(np.unique(index)) == 20
    assert np.array_equal(labels, index % 7)                          # the label of the sample named
    assert np.array_equal(np.rint(features[:, 0] / features[:, 1] - 1), index)   # and its features


@pytest.mark.slow
def test_training_keeps_the_last_epochs_validation_features(run_with_embedding, fmnist_path):
    from mpcl.config.compose import from_dict
    from mpcl.data.datasets import get_dataset
    from mpcl.data.loaders import build_loaders, load_arrays
    from mpcl.engine.checkpoint import load as load_checkpoint
    from mpcl.engine.runtime import build, runtime
    from mpcl.metrics import extract

    with np.load(run_with_embedding / EMBEDDING_FILE) as z:
        features, labels, index = z["features"], z["labels"], z["index"]
        assert int(z["epoch"]) == 1 and str(z["dataset"]) == "fashion_mnist"
        assert list(z["class_names"])[:2] == ["T-shirt/top", "Trouser"]
    assert features.shape[0] == labels.shape[0] == index.shape[0] == CAP
    assert np.array_equal(index, np.unique(index)) and index.max() < 512
    _, val_y = load_arrays(get_dataset("fashion_mnist"), fmnist_path, "val")
    assert np.array_equal(labels, val_y[index])                       # each row's label is its sample's
    # each row's features are the last epoch's model's features of the sample it names
    state = load_checkpoint(run_with_embedding / "checkpoints" / "last.pt")
    cfg = from_dict(state["config"])
    rt = runtime(cfg)
    loaders = build_loaders(cfg, 0, 1, rt.device)
    method, _ = build(cfg, rt, loaders)
    method.load_state_dict(state["model"])
    method.eval()
    val_f, _ = extract(method, loaders.val, rt.autocast)
    expected = torch.nn.functional.normalize(val_f[torch.from_numpy(index)], dim=1).numpy()
    assert np.abs(features.astype(np.float32) - expected).max() < 2e-3   # float16 rounding


@pytest.mark.slow
def test_the_report_of_the_run_draws_the_map(run_with_embedding):
    cli.main(["report", str(run_with_embedding)])
    page = (run_with_embedding / "report" / "index.html").read_text()
    assert (run_with_embedding / "report" / "embedding.png").stat().st_size > 1000
    assert "<h2>Embedding</h2>" in page and 'alt="embedding"' in page
    assert f"t-SNE (openTSNE) of {CAP} validation features, epoch 1" in page


def _clusters(tmp_path: Path, n_classes: int = 5, per_class: int = 60, dim: int = 32) -> Path:
    """A run directory whose embedding.npz holds well-separated Gaussian clusters, one per
    class, rows in a shuffled order."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(n_classes, dim)) * 4
    labels = np.repeat(np.arange(n_classes), per_class)
    features = centres[labels] + rng.normal(size=(len(labels), dim))
    order = rng.permutation(len(labels))
    features, labels = features[order], labels[order]
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "train/loss": 1.0}\n')
    np.savez(tmp_path / EMBEDDING_FILE, features=features.astype(np.float16), labels=labels,
             index=np.arange(len(labels)), epoch=np.int64(0), dataset=np.str_("synthetic"),
             class_names=np.array([f"blob{i}" for i in range(n_classes)]))
    return tmp_path


def _knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out majority vote of the k nearest other points."""
    d = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = labels[np.argsort(d, axis=1)[:, :k]]
    votes = np.array([np.bincount(row, minlength=labels.max() + 1).argmax() for row in nearest])
    return float((votes == labels).mean())


def test_the_drawn_map_keeps_each_point_with_its_class(tmp_path, monkeypatch):
    run = _clusters(tmp_path)
    drawn = {}
    save_png = report_embedding.save_png

    def keep_figure(fig, out_dir, name):
        ax = fig.axes[0]
        drawn.update({c.get_label(): np.asarray(c.get_offsets()) for c in ax.collections})
        return save_png(fig, out_dir, name)

    monkeypatch.setattr(report_embedding, "save_png", keep_figure)
    cli.main(["report", str(run)])
    assert sorted(drawn) == [f"blob{i}" for i in range(5)]          # the legend names the classes
    points = np.concatenate(list(drawn.values()))
    labels = np.concatenate([np.full(len(p), i) for i, p in enumerate(drawn.values())])
    assert len(points) == 300
    assert _knn_accuracy(points, labels) > 0.9                        # as drawn: classes stay apart
    shuffled = np.random.default_rng(0).permutation(labels)
    assert _knn_accuracy(points, shuffled) < 0.5                      # the measure sees a mix-up
    assert (run / "report" / "embedding.png").is_file()


def test_the_map_is_the_same_every_time(tmp_path):
    emb = report_embedding.read_embedding(_clusters(tmp_path, per_class=20) / EMBEDDING_FILE)
    assert np.array_equal(report_embedding.tsne_map(emb.features), report_embedding.tsne_map(emb.features))


def test_without_opentsne_the_page_names_the_extra(tmp_path, monkeypatch):
    run = _clusters(tmp_path, per_class=10)
    monkeypatch.setitem(sys.modules, "openTSNE", None)               # import openTSNE: ImportError
    cli.main(["report", str(run)])
    page = (run / "report" / "index.html").read_text()
    assert "needs openTSNE" in page and "pip install &#x27;mpcl[maps]&#x27;" in page
    assert not (run / "report" / "embedding.png").exists()
    assert "<h2>Epochs</h2>" in page                                  # the rest of the page is there


@pytest.mark.parametrize("content", [b"", b"not a zip"])
def test_a_damaged_embedding_file_is_one_line_on_the_page(tmp_path, content):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "train/loss": 1.0}\n')
    (tmp_path / EMBEDDING_FILE).write_bytes(content)
    cli.main(["report", str(tmp_path)])
    page = (tmp_path / "report" / "index.html").read_text()
    assert "embedding.npz: not a readable embedding file" in page


def test_a_run_without_the_file_has_no_map(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "train/loss": 1.0}\n')
    cli.main(["report", str(tmp_path)])
    assert "Embedding" not in (tmp_path / "report" / "index.html").read_text()
