"""Several workers are correct, not just running; Ray Train resumes a killed worker group.

The 2-vs-1 equivalence runs without Ray (two processes, gloo): each rank takes its half of a
fixed global batch through the method's ``training_step``; the loss averaged over ranks and
the DDP-averaged gradients must equal the one-process run on the whole batch. torch's
SyncBatchNorm is GPU-only, so BatchNorm layers run on their (equal) running statistics here:
what is compared is everything the methods gather (negatives, attention features, the bank).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from mpcl.config.compose import declared_only, load
from mpcl.data.batch import Batch
from mpcl.methods import build_method
from tests.helpers.ranks import on_gloo_ranks
from tests.helpers.runs import tiny_overrides

METHODS = ["simclr", "simclr_attn", "simsiam_multi", "simclr_attn_multi"]
BANKED = ("simsiam_multi", "simclr_attn_multi")
N, CLASSES, SAMPLES = 16, 10, 64


def _cfg(method: str):
    return load(None, declared_only(method, tiny_overrides("/tmp/unused", method, **{   # the knobs it has
        "method.bank_warmup_epochs": 0, "method.attention_weight": 0.7, "scale.sync_bn": True})))


def _batch(rank: int = 0, world: int = 1) -> Batch:
    g = torch.Generator().manual_seed(1)
    views = [torch.rand(N, 3, 32, 32, generator=g) for _ in range(2)]
    index = torch.randperm(SAMPLES, generator=g)[:N]
    label = torch.randint(0, CLASSES, (N,), generator=g)
    n = N // world
    sl = slice(rank * n, (rank + 1) * n)
    return Batch([v[sl] for v in views], index[sl], label[sl])


def _step(method_name: str, rank: int, world: int) -> dict:
    cfg = _cfg(method_name)
    torch.manual_seed(0)
    method = build_method(cfg, CLASSES, SAMPLES)
    method.train()
    for m in method.modules():  # equal BN statistics on every worker (see the docstring)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    epoch = 0
    if method_name in BANKED:  # a filled bank from a previous epoch, then read it
        g = torch.Generator().manual_seed(2)
        method.bank.snapshot.copy_(torch.randn(method.bank.snapshot.shape, generator=g))
        method.bank.snapshot_valid[: SAMPLES // 2] = True
        epoch = 1
    out = method.training_step(_batch(rank, world), epoch)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
    loss = out.loss.detach().clone()
    if world > 1:
        for g_ in grads.values():
            tdist.all_reduce(g_)
            g_ /= world
        tdist.all_reduce(loss)
        loss /= world
    result = {"loss": loss, "grads": grads}
    if method_name in BANKED:
        result["pending"] = method.bank.pending.clone()
        result["pending_valid"] = method.bank.pending_valid.clone()
    return result


def _every_method(rank: int, world: int) -> dict:
    return {m: _step(m, rank, world) for m in METHODS}


@pytest.fixture(scope="module")
def two_worker_results(tmp_path_factory):
    return on_gloo_ranks(_every_method, tmp_path_factory.mktemp("ddp"))


@pytest.mark.parametrize("method", METHODS)
def test_two_workers_match_one_worker(method, two_worker_results):
    torch.set_num_threads(1)
    ref = _step(method, 0, 1)
    for rank, results in enumerate(two_worker_results):
        got = results[method]
        torch.testing.assert_close(got["loss"], ref["loss"], atol=1e-5, rtol=1e-5)
        assert got["grads"].keys() == ref["grads"].keys()
        for name, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, atol=1e-5, rtol=1e-4, msg=f"{method} {name} rank {rank}")
        if method in BANKED:  # every worker's bank got every sample's update
            torch.testing.assert_close(got["pending"], ref["pending"], atol=1e-6, rtol=1e-5)
            assert torch.equal(got["pending_valid"], ref["pending_valid"])
            assert int(got["pending_valid"].sum()) == N


# -- through Ray Train ----------------------------------------------------------------------

# The fault: rank 0's worker process exits hard as it is about to report epoch FAULT_EPOCH
# (in the first attempt only), but not before the controller has registered the checkpoint of
# the epoch before: a UserCallback on the controller writes a flag file when it has, and the
# worker waits for that file. Without the wait, a worker that dies between its report and the
# controller's next poll loses that report, and the restart resumes an epoch earlier.
FAULT_EPOCH = 2
REGISTERED_FLAG = "controller-registered-epoch-{}"

KILLED_FLAG = "worker-killed"


def _flag_when_registered(flag_dir: Path):
    """A callback that runs in the Ray Train controller, after it has registered a report
    (its checkpoint first): it leaves a flag file per epoch. (Built here so that importing
    this module does not import ray.train.)"""
    from ray.train import UserCallback

    class FlagWhenRegistered(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is not None and metrics and "epoch" in metrics[0]:
                (flag_dir / REGISTERED_FLAG.format(int(metrics[0]["epoch"]))).touch()

    return FlagWhenRegistered()


def _loop_that_dies(flag_dir: Path):
    """mpcl's worker loop with ``RayReporter.report`` wrapped in the worker process. A closure,
    so that Ray ships it by value (this test module is not importable in Ray's processes);
    there, ``train_loop_per_worker`` is still mpcl's own (the test swaps it in the driver)."""
    def loop(config: dict) -> None:
        import time

        from mpcl.launch import worker

        registered = flag_dir / REGISTERED_FLAG.format(FAULT_EPOCH - 1)
        start, report = worker.RayReporter.start, worker.RayReporter.report

        def start_noting_resume(self, state):
            self.started_from_checkpoint = state is not None
            start(self, state)

        def report_or_die(self, metrics, state):
            if metrics["epoch"] == FAULT_EPOCH and self.rank == 0 and not self.started_from_checkpoint:
                deadline = time.monotonic() + 300
                while not registered.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                (flag_dir / KILLED_FLAG).touch()
                os._exit(1)
            report(self, metrics, state)

        worker.RayReporter.start = start_noting_resume
        worker.RayReporter.report = report_or_die
        worker.train_loop_per_worker(config)

    return loop


@pytest.mark.ray
def test_killed_worker_resumes_from_its_checkpoint(tmp_path, fmnist_path, local_ray, monkeypatch):
    """The worker process exits hard during epoch 2, after the controller has registered the
    epoch-1 checkpoint; Ray Train restarts the group (max_failures=1), which resumes from it:
    the finished run equals an uninterrupted one, which it can only if the memory bank came
    back as it was saved (epoch 2 reads the bank of epoch 1)."""
    from mpcl.engine.checkpoint import load as load_checkpoint
    from mpcl.engine.local import LocalReporter
    from mpcl.engine.loop import fit
    from mpcl.launch import train as launch
    from mpcl.launch.worker import STATE_FILE

    extra = {"data.path": fmnist_path, "train.epochs": 3, "method.bank_warmup_epochs": 1,
             "data.subset": 256, "data.batch_size": 64, "scale.max_failures": 1, "scale.num_to_keep": 3,
             "tracking.wandb": "disabled"}
    ref_cfg = load(None, tiny_overrides(tmp_path / "ref", "simsiam_multi", **extra))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a 1-CPU Ray worker: the same float reductions
    try:
        fit(ref_cfg, LocalReporter(ref_cfg, echo=False))
    finally:
        torch.set_num_threads(threads)

    cfg = load(None, tiny_overrides(tmp_path / "ray", "simsiam_multi", **extra))
    monkeypatch.setattr(launch, "train_loop_per_worker", _loop_that_dies(tmp_path))
    launch.make_trainer(cfg, callbacks=[_flag_when_registered(tmp_path)]).fit()
    assert (tmp_path / REGISTERED_FLAG.format(FAULT_EPOCH - 1)).exists() and (tmp_path / KILLED_FLAG).exists()
    rows = [json.loads(x) for x in (tmp_path / "ray/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]          # epoch 2 once, none lost
    ref_rows = [json.loads(x) for x in (tmp_path / "ref/metrics.jsonl").read_text().splitlines()]
    for a, b in zip(ref_rows, rows):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-4, abs=1e-5), a["epoch"]
    checkpoints = sorted((tmp_path / "ray").glob("checkpoint_*/" + STATE_FILE))
    assert len(checkpoints) == 3
    saved = load_checkpoint(checkpoints[1])                  # what the killed attempt left
    final = load_checkpoint(checkpoints[2])
    ref = load_checkpoint(tmp_path / "ref/checkpoints/last.pt")
    assert saved["epoch"] == 1 and final["epoch"] == 2
    assert int(saved["model"]["bank.snapshot_epoch"]) == 1
    for key in ("bank.snapshot", "bank.snapshot_valid"):
        torch.testing.assert_close(final["model"][key], ref["model"][key], atol=1e-4, rtol=1e-3)


def test_wrong_address_is_one_line(capsys):
    from mpcl import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--address", "127.0.0.1:1", "--config", "configs/fmnist_simclr.yaml"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "127.0.0.1:1" in err
