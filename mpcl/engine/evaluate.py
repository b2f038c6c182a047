"""Evaluation of a method: at the end of an epoch (``evaluate``, inside ``fit``) and of a
saved checkpoint (``evaluate_checkpoint``, ``run.py eval``). The measures themselves are in
``mpcl.metrics``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mpcl import distributed as dist
from mpcl import metrics
from mpcl.config import Config
from mpcl.data.loaders import Loaders, build_loaders
from mpcl.engine.runtime import Runtime, build, runtime
from mpcl.methods import Method


@torch.no_grad()
def evaluate(method: Method, loaders: Loaders, rt: Runtime, cfg: Config,
             on_features: Callable[[metrics.SplitFeatures], None] | None = None) -> dict[str, float]:
    """kNN top-1 on the validation split (bank: the training split without augmentation),
    the online probe's top-1, and alignment / uniformity of the normalised embeddings.
    ``on_features`` is called on every rank with the gathered features."""
    was_training = method.training
    method.eval()
    feats = metrics.split_features(method, loaders, rt.autocast)
    if on_features is not None:
        on_features(feats)
    out = {
        "val/knn_top1": feats.knn_top1(loaders.spec.num_classes, cfg.train.knn_k, cfg.train.knn_temperature),
        "val/online_top1": metrics.probe_top1(method.probe, feats.val_f, feats.val_y),
    }
    z1s, z2s = [], []
    for batch in loaders.val_pairs:
        with rt.autocast():
            z1s.append(method.embed(method(batch.views[0])).float())
            z2s.append(method.embed(method(batch.views[1])).float())
    if z1s:
        z1, z2 = dist.gather_uneven(torch.cat(z1s)), dist.gather_uneven(torch.cat(z2s))
        out["val/align"] = metrics.alignment(z1, z2)
        out["val/uniform"] = metrics.uniformity(z1)
    out.update(method.extra_metrics(loaders, rt.autocast))
    method.train(was_training)
    return out


def evaluate_checkpoint(path: str, overrides: list[str] | None = None, linear_epochs: int = 100) -> dict[str, Any]:
    """``run.py eval``: kNN top-1 and a linear probe on the frozen encoder of a checkpoint."""
    from mpcl.config.compose import from_dict
    from mpcl.engine.checkpoint import load as load_checkpoint

    state = load_checkpoint(path)
    cfg = from_dict(state["config"], ["model.weights=", *(overrides or [])])  # the checkpoint's weights replace them
    rt = runtime(cfg)
    loaders = build_loaders(cfg, 0, 1, rt.device)
    method, _ = build(cfg, rt, loaders)
    method.load_state_dict(state["model"])
    method.eval()
    feats = metrics.split_features(method, loaders, rt.autocast)
    n = loaders.spec.num_classes
    return {
        "checkpoint": str(path), "epoch": state["epoch"], "method": cfg.method.name,
        "knn_top1": feats.knn_top1(n, cfg.train.knn_k, cfg.train.knn_temperature),
        "linear_top1": metrics.linear_probe(feats.train_f, feats.train_y, feats.val_f, feats.val_y, n,
                                            epochs=linear_epochs),
        "online_top1": metrics.probe_top1(method.probe, feats.val_f, feats.val_y),
        **method.extra_metrics(loaders, rt.autocast),  # e.g. mcl's per-network metrics
    }
