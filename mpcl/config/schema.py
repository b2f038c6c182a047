"""Typed run configuration: the section dataclasses, their knobs and the rules of one value.

Every field declares its default and, where a value can be out of range, its range or its
choices at the field (``knob``). The ``method`` section is the chosen method's own parameter
class (a ``MethodParams`` subclass declared next to the method, in ``mpcl/methods/``).
Composing a config from a preset and overrides needs the method registry, so it lives above
the methods, in ``mpcl.config.compose``; this module imports nothing of mpcl but ``mpcl.files`` (to write a config).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config value; the message is one line: key, value, what is allowed."""


def knob(default: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
         le: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its default and its allowed values: bounds (``gt``/``ge`` below,
    ``lt``/``le`` above) or ``choices``; ``check_value`` enforces them."""
    lower = (gt, False) if gt is not None else (ge, True) if ge is not None else None
    upper = (lt, False) if lt is not None else (le, True) if le is not None else None
    return field(default=default, metadata={"lower": lower, "upper": upper, "choices": choices})


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"   # fashion_mnist | cifar10 | cifar100 | stl10 | imagenet100 | folder: any
                                     # folder `python -m data_prep` wrote (data.path), described by its manifest
    path: str = ""              # "" = the dataset's default: the .beton folder (loader=ffcv) or raw files (torch)
    image_size: int = knob(0, ge=0)  # side of the training crop (0 = the dataset's: a folder's median shorter
                                     # side, at most 224); at most the longest stored side
    loader: str = knob("ffcv", choices=("torch", "ffcv"))  # ffcv: .beton files from python -m data_prep;
                                                          # torch: the fallback over raw arrays
    train_split: str = knob("train", choices=("train", "unlabeled"))  # the split the SSL loss trains on:
                                # unlabeled = unlabeled.beton (STL-10's 100,000); kNN and the probes
                                # keep the labelled train split
    subset: int = knob(0, ge=0)         # train on the first N training samples (0 = all)
    val_subset: int = knob(0, ge=0)     # evaluate on the first N validation samples (0 = all)
    batch_size: int = knob(256, ge=1)   # global batch (samples, not views), split over workers
    num_workers: int = knob(2, ge=0)    # loader worker processes / threads
    crop_scale_min: float = knob(0.08, gt=0.0, le=1.0)
    jitter_strength: float = knob(1.0, ge=0.0)   # scales (0.4, 0.4, 0.4, 0.1)
    jitter_prob: float = knob(0.8, ge=0.0, le=1.0)
    grayscale_prob: float = knob(0.2, ge=0.0, le=1.0)
    blur_prob: float = knob(0.0, ge=0.0, le=1.0)
    solarize_prob: float = knob(0.0, ge=0.0, le=1.0)
    normalize: bool = False     # mean/std normalisation after the colour ops
    num_small_crops: int = knob(0, ge=0)  # multi-crop (SwAV-style): extra low-resolution views
    small_crop_size: int = knob(0, ge=0)  # side of the small crops (0 = image_size * 96 / 224, at least 8)
    min_per_class: int = 0      # >= 2: batches built from groups of this many same-class samples
                                # (mcl supervised; 0 = plain shuffling)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # resnet18 | resnet50 | small_cnn | timm/<name>: any timm model (mpcl[timm])
    cifar_stem: bool = True     # torchvision ResNets: 3x3 stride-1 conv1, no max-pool (small images)
    zero_init_residual: bool = False  # torchvision ResNets: each block's last BN starts at zero
    patch_size: int = knob(0, ge=0)   # timm ViTs: the patch side (0 = the model's own; 4 or 8 for 32 px images)
    weights: str = ""           # a state-dict file (.pt or .safetensors) loaded strictly at start ("" = random init)
    projector_hidden: int = knob(512, ge=1)
    projector_out: int = knob(128, ge=1)
    predictor_hidden: int = knob(512, ge=1)
    channels_last: bool = True  # on CUDA only


@dataclass
class MethodParams:
    """The base of every method's parameters: the method's registered name. A method's own
    class adds its knobs (with ``knob``) and, for rules between keys, overrides ``check``."""

    name: str = ""

    def check(self, cfg: Config) -> None:
        """Rules between this method's knobs and the rest of ``cfg``; raises ConfigError."""


@dataclass
class OptimConfig:
    name: str = knob("sgd", choices=("sgd", "lars", "adamw"))  # adamw: the ViT recipes (betas: momentum, beta2)
    lr: float = knob(0.5, gt=0.0)       # base lr, scaled by global batch / 256 when scale_lr
    scale_lr: bool = True
    momentum: float = knob(0.9, ge=0.0, lt=1.0)  # sgd, lars; adamw: beta1
    beta2: float = knob(0.999, ge=0.0, lt=1.0)  # adamw: the second-moment decay
    weight_decay: float = knob(1e-5, ge=0.0)
    warmup_epochs: float = knob(10.0, ge=0.0)  # may be fractional (1% of 200 epochs = 2.0)
    min_lr: float = knob(0.0, ge=0.0)
    trust_coefficient: float = 1e-3     # lars
    exclude_bn_bias: bool = True        # no weight decay / adaptation for norms, biases (every tensor
                                        # of ndim <= 1) and ViT position embeddings and class tokens
    predictor_fixed_lr: bool = True     # simsiam: predictor lr not scheduled
    probe_lr: float = knob(0.1, gt=0.0)  # online linear probe (its own fixed lr)


@dataclass
class TrainConfig:
    epochs: int = knob(100, ge=1)
    seed: int = 0
    device: str = knob("auto", choices=("auto", "cpu", "cuda"))
    precision: str = knob("auto", choices=("auto", "bf16", "fp16", "fp32"))  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    eval_every: int = knob(1, ge=1)     # epochs between evaluations (the last epoch always evaluates)
    knn_k: int = knob(20, ge=1)
    knn_temperature: float = knob(0.07, gt=0.0)
    checkpoint_every: int = knob(1, ge=1)
    resume: bool = True                 # resume from out/checkpoints/last.pt when present
    log_every: int = knob(50, ge=1)     # steps between host-synchronised metric reads
    progress: str = knob("auto", choices=("auto", "true", "false"))  # auto: a bar on a terminal only


@dataclass
class ScaleConfig:
    workers: int = knob(1, ge=1)
    use_gpu: str = knob("auto", choices=("auto", "true", "false"))
    cpus_per_worker: int = knob(1, ge=1)
    gpus_per_worker: float = knob(1.0, ge=0.0)
    max_failures: int = knob(0, ge=-1)
    sync_bn: bool = False
    num_to_keep: int = knob(2, ge=1)


@dataclass
class TrackingConfig:
    # auto: online with an API key, else offline
    wandb: str = knob("auto", choices=("auto", "online", "offline", "disabled"))
    project: str = "mpcl"
    entity: str = ""
    name: str = ""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # the chosen method's parameters: its own MethodParams subclass, picked by mpcl.config.compose
    method: MethodParams = field(default_factory=MethodParams)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    out: str = "runs/default"


SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "out"]

# other spellings accepted for a key (``lambda`` is a Python keyword, so not a field name)
ALIASES = {"method.lambda": "method.barlow_lambda"}


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the annotated type; ints are accepted for floats."""
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, bool):  # YAML reads true/false/on/off as booleans
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
    else:  # pragma: no cover - only the types above are used
        return value
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{key}={value!r}: expected {name}, got {type(value).__name__}")


def has_key(cfg: Config, key: str) -> bool:
    """Whether ``section.key`` (or ``out``) names a field of ``cfg`` (aliases resolved)."""
    parts = ALIASES.get(key, key).split(".")
    if parts == ["out"]:
        return True
    return len(parts) == 2 and parts[0] in SECTIONS and parts[1] in field_types(type(getattr(cfg, parts[0])))


def apply(cfg: Config, key: str, value: Any) -> None:
    """Sets ``section.key`` (or ``out``) to ``value`` checked against the field's type."""
    key = ALIASES.get(key, key)
    parts = key.split(".")
    if parts == ["out"]:
        cfg.out = coerce("out", value, str)
        return
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"{key}: unknown key; sections are {', '.join(SECTIONS)} "
                          "(as section.key) and out")
    section_name, name = parts
    section = getattr(cfg, section_name)
    types_ = field_types(type(section))
    if name not in types_:
        if section_name == "method":
            knobs = [k for k in types_ if k != "name"]
            raise ConfigError(f"{key}: not a parameter of method {section.name!r} "
                              f"(it has: {', '.join(knobs) or 'no parameters'})")
        raise ConfigError(f"{key}: unknown key; {section_name} has {', '.join(types_)}")
    setattr(section, name, coerce(key, value, types_[name]))


def check_value(key: str, value: Any, f: dataclasses.Field) -> None:
    """A finite float, one of the field's ``choices``, within its bounds; else ConfigError."""
    if isinstance(value, float) and not math.isfinite(value):   # NaN and inf pass every comparison
        raise ConfigError(f"{key}={value!r}: must be a finite number")
    choices, lower, upper = f.metadata.get("choices"), f.metadata.get("lower"), f.metadata.get("upper")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}={value!r}: allowed: {', '.join(choices)}")
    below = lower is not None and (value < lower[0] if lower[1] else value <= lower[0])
    above = upper is not None and (value > upper[0] if upper[1] else value >= upper[0])
    if not (below or above):
        return
    if upper is None:
        rule = f"must be {'>=' if lower[1] else '>'} {lower[0]}"
    else:
        lo = "" if lower is None else f"{lower[0]} {'<=' if lower[1] else '<'} "
        rule = f"must satisfy {lo}value {'<=' if upper[1] else '<'} {upper[0]}"
    raise ConfigError(f"{key}={value!r}: {rule}")


def check_values(cfg: Config) -> None:
    """Every field of every section (the method's parameters included) against its knob."""
    if not cfg.out:
        raise ConfigError("out='': the run directory must be set")
    for section_name in SECTIONS:
        section = getattr(cfg, section_name)
        for f in dataclasses.fields(section):
            check_value(f"{section_name}.{f.name}", getattr(section, f.name), f)


def get(cfg: Config, key: str) -> Any:
    if key == "out":
        return cfg.out
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}"""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """``'method.temperature=0.2'`` -> ``('method.temperature', 0.2)`` (YAML scalar parsing)."""
    if "=" not in text:
        raise ConfigError(f"{text}: overrides are section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if value is None:
        value = raw
    return key.strip(), value


def _duplicate_key(node: yaml.Node, prefix: str = "") -> str | None:
    """The first key repeated within one mapping of a composed YAML document, as
    ``"section.key (lines 3 and 4)"``; PyYAML itself silently keeps the last one."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
            if key in seen:
                return f"{key!r} (lines {seen[key]} and {line})"
            seen[key] = line
            found = _duplicate_key(value_node, key + ".")
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, f"{prefix}{i}.")
            if found:
                return found
    return None


def read_yaml_mapping(path: str | Path, error: type[Exception], missing: str, expected: str) -> dict:
    """A YAML file whose top level is a mapping (config presets and sweep files alike); every
    problem (missing, empty, not YAML, a duplicate key, not a mapping) is one ``error`` line
    naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise error(missing)
    try:
        text = path.read_text()
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        tree = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if duplicate:
        raise error(f"{path}: duplicate key {duplicate}")
    if tree is None:
        raise error(f"{path}: empty file (expected {expected})")
    if not isinstance(tree, dict):
        raise error(f"{path}: expected {expected}")
    return tree


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as nested dicts; the method section holds the chosen method's keys only."""
    return dataclasses.asdict(cfg)


def dump(cfg: Config, path: str | Path) -> None:
    from mpcl.files import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = ["ALIASES", "SECTIONS", "Config", "ConfigError", "DataConfig", "MethodParams", "ModelConfig", "OptimConfig",
           "ScaleConfig", "TrackingConfig", "TrainConfig", "apply", "check_value", "check_values", "coerce", "dump",
           "field_types", "flatten", "get", "has_key", "knob", "parse_override", "read_yaml_mapping", "to_dict"]
