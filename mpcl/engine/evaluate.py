"""Evaluation of a method: at the end of an epoch (``evaluate``, inside ``fit``) and of a
saved checkpoint, on the run's dataset or another one (``evaluate_checkpoint``, ``run.py eval``).
The measures themselves are in ``mpcl.metrics``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from mpcl import distributed as dist
from mpcl import metrics
from mpcl.config import Config
from mpcl.data.datasets import DATASETS, get_dataset
from mpcl.data.loaders import Loaders, build_loaders
from mpcl.engine.runtime import Runtime, build, runtime
from mpcl.methods import Method


@torch.no_grad()
def evaluate(method: Method, loaders: Loaders, rt: Runtime, cfg: Config,
             on_features: Callable[[metrics.SplitFeatures], None] | None = None) -> dict[str, float]:
    """kNN top-1 on the validation split (bank: the training split without augmentation),
    the online probe's top-1 (both need labelled data), and alignment / uniformity of the
    normalised embeddings. ``on_features`` is called on every rank with the gathered features
    (labelled data only)."""
    was_training = method.training
    method.eval()
    out = {}
    if loaders.spec.labelled:
        feats = metrics.split_features(method, loaders, rt.autocast)
        if on_features is not None:
            on_features(feats)
        out["val/knn_top1"] = feats.knn_top1(loaders.spec.num_classes, cfg.train.knn_k, cfg.train.knn_temperature)
        out["val/online_top1"] = metrics.probe_top1(method.probe, feats.val_f, feats.val_y)
    z1s, z2s = [], []
    for batch in loaders.val_pairs:
        with rt.autocast():
            z1s.append(method.embed(method(batch.views[0])).float())
            z2s.append(method.embed(method(batch.views[1])).float())
    if z1s:
        z1, z2 = dist.gather_uneven(torch.cat(z1s)), dist.gather_uneven(torch.cat(z2s))
        out["val/align"] = metrics.alignment(z1, z2)
        out["val/uniform"] = metrics.uniformity(z1)
    if loaders.spec.labelled:
        out.update(method.extra_metrics(loaders, rt.autocast))
    method.train(was_training)
    return out


class EvaluationError(ValueError):
    """Data that kNN and the probes cannot measure (one line)."""


def data_path(cfg: Config) -> str:
    """Where ``cfg`` reads its dataset: ``data.path``, or the dataset's default for the loader."""
    return cfg.data.path or get_dataset(cfg.data.dataset).default_path(cfg.data.loader)


def same_data(trained: dict[str, Any], evaluated: Config) -> bool:
    """Whether ``evaluated`` reads the dataset a run trained on (``trained``: its saved ``data``
    section; the name and the folder): only then do the online probe and the method's other
    heads fit the classes."""
    def where(dataset: str, path: str, loader: str) -> str:
        path = path or get_dataset(dataset).default_path(loader)
        return path if "://" in path else os.path.realpath(path)

    d = evaluated.data
    if trained.get("dataset") != d.dataset:
        return False
    then = where(d.dataset, trained.get("path", ""), trained.get("loader", d.loader))
    return then == where(d.dataset, d.path, d.loader)


def trained_crop(trained: dict[str, Any]) -> int:
    """The crop a run trained at (``trained``: its saved ``data`` section; 0 when unknown): the
    encoder keeps it on another dataset (a ViT's position embeddings are sized to it)."""
    name = trained.get("dataset", "")
    return int(trained.get("image_size") or (get_dataset(name).image_size if name in DATASETS else 0))


def load_encoder_state(method: Method, model_state: dict[str, torch.Tensor], cfg: Config) -> None:
    """Loads, strictly, only the encoder part of a method's state (``encoder_prefix``) into the
    encoder ``method.forward`` runs; its heads keep their fresh initialisation."""
    prefix = method.encoder_prefix(cfg.method)
    method.encoder().load_state_dict({k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)},
                            strict=True)


def evaluate_checkpoint(path: str, overrides: list[str] | None = None, linear_epochs: int = 100,
                        finetune_epochs: int = 0) -> dict[str, Any]:
    """``run.py eval``: kNN top-1 and a linear probe on the frozen encoder of a checkpoint, on
    the run's dataset or on another one that ``overrides`` name (``data.dataset=...``,
    ``data.path=...``: transfer). On the run's own dataset the whole method is loaded and its
    online probe and extra metrics are reported too; on another dataset only the encoder is
    loaded (the heads may not fit its classes). ``finetune_epochs`` > 0: then the encoder and a
    new head are trained end to end (``mpcl.engine.finetune``)."""
    from mpcl.config.compose import from_dict
    from mpcl.engine.checkpoint import load as load_checkpoint

    state = load_checkpoint(path)
    trained = state["config"].get("data", {})
    crop = trained_crop(trained)
    # the checkpoint's weights replace model.weights; the crop stays the run's unless overridden
    cfg = from_dict(state["config"], ["model.weights=", *([f"data.image_size={crop}"] if crop else []),
                                      *(overrides or [])])
    rt = runtime(cfg)
    loaders = build_loaders(cfg, 0, 1, rt.device)
    method, _ = build(cfg, rt, loaders)
    own_data = same_data(trained, cfg)
    if own_data:
        method.load_state_dict(state["model"])
    else:
        load_encoder_state(method, state["model"], cfg)
    method.eval()
    feats = metrics.split_features(method, loaders, rt.autocast)
    if (feats.train_y < 0).any() or (feats.val_y < 0).any() or not len(feats.train_y) or not len(feats.val_y):
        raise EvaluationError(f"no labelled split in {data_path(cfg)}: kNN and the probes need labels")
    n = loaders.spec.num_classes
    result = {
        "checkpoint": str(path), "epoch": state["epoch"], "method": cfg.method.name,
        "dataset": {"name": cfg.data.dataset, "path": data_path(cfg), "num_classes": n,
                    "train_size": len(feats.train_y), "val_size": len(feats.val_y), "same_as_training": own_data},
        "knn_top1": feats.knn_top1(n, cfg.train.knn_k, cfg.train.knn_temperature),
        "linear_top1": metrics.linear_probe(feats.train_f, feats.train_y, feats.val_f, feats.val_y, n,
                                            epochs=linear_epochs),
    }
    if own_data:
        result["online_top1"] = metrics.probe_top1(method.probe, feats.val_f, feats.val_y)
        result.update(method.extra_metrics(loaders, rt.autocast))  # e.g. mcl's per-network metrics
    if finetune_epochs > 0:
        from mpcl.engine.finetune import finetune

        result.update(finetune(method, cfg, rt, loaders.val, n, finetune_epochs))
    return result
