"""The engine through the CLI on real Fashion-MNIST: every method trains, checkpoints resume
exactly, divergence stops the run and keeps the last good checkpoint, eval reads a checkpoint."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from mpcl import cli
from mpcl.config.compose import load
from mpcl.engine.checkpoint import load as load_checkpoint
from mpcl.engine.local import LocalReporter
from mpcl.engine.loop import DivergedError, fit, reported_metrics
from tests.helpers.runs import tiny_overrides

REQUIRED = {"epoch", "train/loss", "val/knn_top1", "val/online_top1", "lr", "val/align", "val/uniform"}


# simclr trains in the fast suite; the others in the full one (each with its unit-level
# reference and gradient-flow tests in the fast suite)
@pytest.mark.parametrize("method", ["simclr", pytest.param("simclr_attn", marks=pytest.mark.slow),
                                    pytest.param("simsiam", marks=pytest.mark.slow),
                                    pytest.param("simsiam_multi", marks=pytest.mark.slow),
                                    pytest.param("simclr_attn_multi", marks=pytest.mark.slow)])
def test_each_method_trains_one_epoch_through_the_cli(method, tmp_path, fmnist_path, capsys):
    out = tmp_path / method
    extra = {"method.bank_warmup_epochs": 0} if method.endswith("_multi") else {}
    overrides = tiny_overrides(out, method, **{"data.path": fmnist_path, "train.epochs": 2, **extra})
    cli.main(["train", "--config", f"configs/fmnist_{method}.yaml", "--no-ray", *overrides])
    assert (out / "config.yaml").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[-1].keys() >= REQUIRED
    # what a sweep may name as its objective is exactly what an evaluated epoch reports
    assert sorted(rows[-1]) == sorted(reported_metrics(load(f"configs/fmnist_{method}.yaml", overrides)))
    assert rows[1]["train/loss"] < rows[0]["train/loss"]  # training helped: the loss falls
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["config"]["method"]["name"] == method
    if method.endswith("_multi"):
        assert int(state["model"]["bank.snapshot_epoch"]) == 1
        assert state["model"]["bank.snapshot_valid"].sum() == 512   # 4 batches of 128 cover the subset
    assert "run directory" in capsys.readouterr().out


def _cfg(out, fmnist_path, **extra):
    return load(None, tiny_overrides(out, "simsiam_multi", **{
        "data.path": fmnist_path, "method.bank_warmup_epochs": 0, "data.subset": 256, "data.batch_size": 64,
        **extra}))


def test_resume_gives_the_same_next_epoch(tmp_path, fmnist_path):
    whole = _cfg(tmp_path / "whole", fmnist_path, **{"train.epochs": 2})
    fit(whole, LocalReporter(whole, echo=False))
    split = _cfg(tmp_path / "split", fmnist_path, **{"train.epochs": 2})
    with pytest.raises(KeyboardInterrupt):      # one epoch, then the process "dies"
        fit(split, _StopAfter(split, stop_after=1))
    fit(split, LocalReporter(split, echo=False))  # the same out: resumes after epoch 0
    a = [json.loads(x) for x in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "split/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [0, 1]                     # no epoch twice, none lost
    for ra, rb in zip(a, b):
        assert ra["train/loss"] == rb["train/loss"], ra["epoch"]  # bit-identical on CPU
        assert ra["val/knn_top1"] == rb["val/knn_top1"]
    sa = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")["model"]
    sb = load_checkpoint(tmp_path / "split/checkpoints/last.pt")["model"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k                       # bank buffers included


class _StopAfter(LocalReporter):
    def __init__(self, cfg, stop_after):
        super().__init__(cfg, echo=False)
        self.stop_after = stop_after

    def report(self, metrics, state):
        super().report(metrics, state)
        if metrics["epoch"] + 1 >= self.stop_after:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory, fmnist_path) -> Path:
    """A finished one-epoch tiny SimCLR run (SGD), trained once for the tests below."""
    out = tmp_path_factory.mktemp("simclr") / "run"
    cli.main(["train", "--no-ray", *tiny_overrides(out, "simclr", **{"data.path": fmnist_path, "optim.name": "sgd"})])
    return out


def test_divergence_stops_and_keeps_the_last_good_checkpoint(simclr_run, tmp_path, fmnist_path, capsys):
    out = Path(shutil.copytree(simclr_run, tmp_path / "run"))
    args = tiny_overrides(out, "simclr", **{"data.path": fmnist_path, "optim.name": "sgd"})
    good = load_checkpoint(out / "checkpoints/last.pt")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--no-ray", *args, "train.epochs=2", "optim.lr=1e30"])
    assert e.value.code == 1
    assert "diverged at epoch 1 step" in capsys.readouterr().err
    kept = load_checkpoint(out / "checkpoints/last.pt")
    assert kept["epoch"] == 0
    assert all(torch.equal(good["model"][k], kept["model"][k]) for k in good["model"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_diverged_error_type(tmp_path, fmnist_path):
    cfg = load(None, tiny_overrides(tmp_path, "simclr", **{"data.path": fmnist_path, "optim.lr": 1e30,
                                                           "optim.name": "sgd"}))
    with pytest.raises(DivergedError, match=r"diverged at epoch 0 step \d+"):
        fit(cfg, LocalReporter(cfg, echo=False))
    assert not (tmp_path / "checkpoints/last.pt").exists()


def test_eval_reads_a_checkpoint(simclr_run, capsys):
    out = simclr_run
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    capsys.readouterr()
    cli.main(["eval", "--checkpoint", str(out / "checkpoints/last.pt"), "--linear-epochs", "5"])
    result = json.loads(capsys.readouterr().out)
    assert result["epoch"] == 0 and result["method"] == "simclr"
    # the saved encoder on the same data: what the run measured at its end
    assert result["knn_top1"] == logged["val/knn_top1"]
    assert result["online_top1"] == pytest.approx(logged["val/online_top1"])
    assert result["linear_top1"] > 40                    # chance is 10 %


@pytest.mark.slow
def test_eval_reports_every_mcl_network(tmp_path, fmnist_path, capsys):
    out = tmp_path / "run"
    cli.main(["train", "--no-ray", *tiny_overrides(out, "mcl", **{"data.path": fmnist_path,
                                                                  "method.report_networks": True})])
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    capsys.readouterr()
    cli.main(["eval", "--checkpoint", str(out / "checkpoints/last.pt"), "--linear-epochs", "1"])
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "mcl"
    assert result["val/knn_top1_net0"] == pytest.approx(result["knn_top1"])  # network 0 is evaluated
    # each network's kNN as the run measured it at its end (the two networks differ)
    assert result["val/knn_top1_net1"] == pytest.approx(logged["val/knn_top1_net1"])
    assert result["val/knn_top1_net0"] == pytest.approx(logged["val/knn_top1_net0"])


def test_eval_of_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--checkpoint", str(tmp_path / "nope.pt")])
    assert e.value.code == 2 and "nope.pt" in capsys.readouterr().err


def test_a_torn_checkpoint_is_named(tmp_path):
    p = Path(tmp_path) / "last.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="last.pt: not a readable mpcl checkpoint"):
        load_checkpoint(p)
