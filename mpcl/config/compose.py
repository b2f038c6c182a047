"""Composing a run's ``Config``: the defaults, a YAML preset, then ``section.key=value``
overrides, validated before any work (``ConfigError``: one line naming the key, the value and
what is allowed).

The method section is the chosen method's own parameter class, so the method name is resolved
first (the preset's, then the overrides'; ``simclr`` when neither sets it) and the other
``method.*`` keys are applied to that class: a key the method does not declare is an error.
This module sits above ``mpcl.methods`` (it needs the registry); ``mpcl.config`` below holds the
schema that the methods and the data import.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mpcl.config.schema import (ALIASES, Config, ConfigError, apply, check_values, coerce, field_types, flatten,
                         has_key, parse_override)
from mpcl.data.datasets import DATASET_NAMES, DatasetSpec, SourceError, dataset_spec
from mpcl.methods import METHODS, method_class, new_params
from mpcl.models import BACKBONES, BackboneError, check_backbone
from mpcl.models.timm_backbone import is_timm
from mpcl.config.presets import read_preset

DEFAULT_METHOD = "simclr"
Items = Iterable[tuple[str, Any]]


def _items(overrides: list[str] | dict[str, Any] | None) -> list[tuple[str, Any]]:
    if isinstance(overrides, dict):
        return list(overrides.items())
    return [parse_override(o) for o in overrides or []]


def load(path: str | Path | list[str | Path] | None = None,
         overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Defaults <- YAML preset(s) <- overrides; validated. A list of presets merges in order,
    each later one overriding the earlier (``read_preset``). Raises ConfigError."""
    tree = {} if path is None else read_preset(path)
    return compose([], [*flatten(tree).items(), *_items(overrides)])


def from_dict(tree: dict[str, Any], overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """A stored config (``to_dict``'s output: config.yaml, a checkpoint's, a worker's copy)
    back as a validated Config, then ``overrides``. The stored ``method.*`` keys that the method
    does not declare are dropped: configs written before each method declared its own
    parameters list every method's keys. The overrides are checked as ``load`` checks them."""
    return compose(flatten(tree).items(), _items(overrides))


def compose(stored: Items, given: Items) -> Config:
    """A validated Config from ``stored`` keys (undeclared method keys dropped) and then
    ``given`` keys (every key must exist)."""
    stored = [(ALIASES.get(k, k), v) for k, v in stored]
    given = [(ALIASES.get(k, k), v) for k, v in given]
    names = [v for k, v in [*stored, *given] if k == "method.name"]
    name = coerce("method.name", names[-1], str) if names else DEFAULT_METHOD
    cfg = Config(method=new_params(name))
    for key, value in stored:
        if key != "method.name" and (has_key(cfg, key) or not key.startswith("method.")):
            apply(cfg, key, value)
    for key, value in given:
        if key != "method.name":
            apply(cfg, key, value)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every value against its knob, the registries, then the rules between keys."""
    params_class = method_class(cfg.method.name).Params
    if type(cfg.method) is not params_class:
        raise ConfigError(f"method.name={cfg.method.name!r}: its parameters are {params_class.__name__}, "
                          f"not {type(cfg.method).__name__}")
    check_values(cfg)
    for key, registry, value in (("model.backbone", BACKBONES, cfg.model.backbone),
                                 ("data.dataset", DATASET_NAMES, cfg.data.dataset)):
        if value not in registry and not (key == "model.backbone" and is_timm(value)):
            allowed = f"{', '.join(sorted(registry))}{' or timm/<model>' if key == 'model.backbone' else ''}"
            raise ConfigError(f"{key}={value!r}: unknown; allowed: {allowed}")
    spec = _validate_dataset(cfg)
    _validate_backbone(cfg, spec)
    if cfg.data.batch_size % cfg.scale.workers:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size}: must be a multiple of "
                          f"scale.workers={cfg.scale.workers}")
    _validate_batches(cfg)
    cfg.method.check(cfg)


def _validate_dataset(cfg: Config) -> DatasetSpec:
    """The dataset can be read as described (a folder's manifest), the crop cut from its images,
    and a method that trains on labels has them."""
    try:
        spec = dataset_spec(cfg.data)
    except SourceError as e:
        raise ConfigError(str(e)) from None
    if cfg.data.train_split not in spec.splits:
        raise ConfigError(f"data.train_split={cfg.data.train_split}: {spec.name} has no such split "
                          f"(it has {', '.join(spec.splits)}; STL-10's is written by data_prep stl10 --unlabeled)")
    unlabelled = ""   # why the training samples carry no classes
    if not spec.labelled:
        unlabelled = f"{spec.name} is unlabelled"
    elif cfg.data.train_split == "unlabeled":
        unlabelled = "data.train_split=unlabeled trains on unlabelled images"
    uses = method_class(cfg.method.name).label_use(cfg.method)
    if uses and unlabelled:
        raise ConfigError(f"method.name={cfg.method.name}: {uses}, but {unlabelled}; "
                          "train a self-supervised method on them, or labelled images")
    if cfg.data.min_per_class and unlabelled:
        raise ConfigError(f"data.min_per_class={cfg.data.min_per_class}: groups samples by class, but {unlabelled}")
    return spec


def _validate_backbone(cfg: Config, spec: DatasetSpec) -> None:
    """A timm backbone needs timm, a model of that name that takes the kwargs the config asks
    for; ``model.patch_size`` is for timm models only; ``model.weights`` must fit the backbone."""
    m = cfg.model
    if m.patch_size and not is_timm(m.backbone):
        raise ConfigError(f"model.patch_size={m.patch_size}: for timm models only, not model.backbone={m.backbone}")
    try:
        check_backbone(m.backbone, m.cifar_stem, m.zero_init_residual,
                       image_size=spec.image_size, patch_size=m.patch_size,
                       dynamic_size=cfg.data.num_small_crops > 0, weights=m.weights)
    except BackboneError as e:
        raise ConfigError(str(e)) from None


def _validate_batches(cfg: Config) -> None:
    """Multi-crop needs a method that uses every view and the torch loader; class-grouped
    batches need the torch loader and groups that divide the per-worker batch."""
    d = cfg.data
    if d.num_small_crops:
        if not method_class(cfg.method.name).supports_multi_crop:
            allowed = sorted(k for k, v in METHODS.items() if v.supports_multi_crop)
            raise ConfigError(f"data.num_small_crops={d.num_small_crops}: multi-crop is supported by "
                              f"{', '.join(allowed)}, not method.name={cfg.method.name!r}")
        if d.loader == "ffcv":
            raise ConfigError(f"data.num_small_crops={d.num_small_crops}: multi-crop needs data.loader=torch "
                              "(the ffcv loader yields two views)")
    if d.min_per_class == 1 or d.min_per_class < 0:
        raise ConfigError(f"data.min_per_class={d.min_per_class}: must be 0 (off) or >= 2")
    if d.min_per_class:
        if d.loader == "ffcv":
            raise ConfigError(f"data.min_per_class={d.min_per_class}: class-grouped batches need data.loader=torch")
        local = d.batch_size // cfg.scale.workers
        if local % d.min_per_class:
            raise ConfigError(f"data.min_per_class={d.min_per_class}: must divide the per-worker batch "
                              f"data.batch_size / scale.workers = {local}")


def declared_only(name: str, overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """``overrides`` without the ``method.*`` keys that another method declares but method
    ``name`` does not: one set of overrides given to several methods (bench, reproduce). A
    ``method.*`` key that no method declares stays, so that loading reports it."""
    own = set(field_types(method_class(name).Params))
    anyone = {k for m in METHODS.values() for k in field_types(m.Params)}
    kept = {}
    for key, value in _items(overrides):
        knob_name = ALIASES.get(key, key).removeprefix("method.")
        if key.startswith("method.") and knob_name not in own and knob_name in anyone:
            continue
        kept[key] = value
    return kept


__all__ = ["load", "from_dict", "compose", "validate", "declared_only", "DEFAULT_METHOD"]
