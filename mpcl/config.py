"""Typed run configuration: dataclass sections, YAML presets, dotted overrides, validation.

A config is loaded in three layers: the dataclass defaults, a YAML preset
(``configs/<dataset>_<method>.yaml``), then ``section.key=value`` overrides from the
command line. ``validate`` runs before any work and raises ``ConfigError`` with one line
naming the key, the value and what is allowed.
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


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    path: str = ""              # "" = the dataset's default: the .beton folder (loader=ffcv) or raw files (torch)
    loader: str = "ffcv"        # ffcv (.beton files from python -m data_prep) | torch (fallback, raw arrays)
    subset: int = 0             # train on the first N training samples (0 = all)
    val_subset: int = 0         # evaluate on the first N validation samples (0 = all)
    batch_size: int = 256       # global batch (samples, not views), split over workers
    num_workers: int = 2        # loader worker processes / threads
    crop_scale_min: float = 0.08
    jitter_strength: float = 1.0   # scales (0.4, 0.4, 0.4, 0.1)
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    solarize_prob: float = 0.0
    normalize: bool = False     # mean/std normalisation after the colour ops
    num_small_crops: int = 0    # multi-crop (SwAV-style): extra low-resolution views (simclr, simclr_attn, supcon)
    small_crop_size: int = 0    # side of the small crops (0 = image_size * 96 / 224, at least 8)
    min_per_class: int = 0      # >= 2: batches built from groups of this many same-class samples
                                # (mcl supervised; 0 = plain shuffling)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # resnet18 | resnet50 | small_cnn
    cifar_stem: bool = True     # 3x3 stride-1 conv1, no max-pool (small images)
    zero_init_residual: bool = False
    projector_hidden: int = 512
    projector_out: int = 128
    predictor_hidden: int = 512
    channels_last: bool = True  # on CUDA only


@dataclass
class MethodConfig:
    name: str = "simclr"
    temperature: float = 0.5
    attention_weight: float = 1.0       # simclr_attn(_multi): a in ((1-a) + a*w_i)
    attention_temperature: float = 1.0  # simclr_attn(_multi): softmax temperature of the weights
    attention_target: str = "loss"      # simclr_attn(_multi): loss (each anchor's whole InfoNCE term, the
                                        # released form) | alignment (only the positive logit)
    bank_mix: float = 0.5               # simsiam_multi, simclr_attn_multi: b in (1-b)*z + b*bank[index]
    bank_warmup_epochs: int = 50        # simsiam_multi, simclr_attn_multi: last plain-target epoch (0-based); the
                                        # first mixed epoch is bank_warmup_epochs + 1 (released: 51)
    bank_dtype: str = "float32"         # simsiam_multi, simclr_attn_multi: float32 | bfloat16 storage
    # barlow_twins (``method.lambda`` is accepted as an alias of barlow_lambda)
    barlow_lambda: float = 5e-3         # weight of the off-diagonal terms
    scale_loss: float = 1.0             # multiplies the whole Barlow Twins loss
    # moco / mcl (unsupervised)
    momentum: float = 0.99              # EMA of the key encoder
    momentum_schedule: str = "constant" # constant | cosine (towards 1 over training, BYOL-style)
    queue_size: int = 4096              # rounded down to a multiple of the keys enqueued per step
    symmetric: bool = False             # moco: both views as queries, mean of the two losses
    mlp: bool = True                    # moco / mcl: MLP projection head (MoCo v2) or linear (v1)
    # mcl
    mode: str = "unsupervised"          # unsupervised (MoCo-based) | supervised (CE + in-batch contrast)
    num_networks: int = 2
    alpha: float = 0.1                  # weight of VCL (vanilla contrastive, within a network)
    beta: float = 0.1                   # weight of ICL (inter-network contrastive)
    gamma: float = 1.0                  # weight of soft VCL (KL between networks' VCL distributions)
    lam: float = 1.0                    # weight of soft ICL (KL between the ICL distribution pairs)
    kd_temperature: float = 3.0         # T of the soft (KL) terms and of logit distillation
    logit_distill: bool = False         # mcl supervised: KL of each network towards the mean logits
    embed_dim: int = 128                # mcl supervised: embedding head d-128-128
    eval_network: int = 0               # mcl: the network kNN / probe / checkpoints' encoder use
    report_networks: bool = False       # mcl: also report kNN top-1 of every network
    # spcl
    num_prototypes: int = 10            # k-means clusters = classifier outputs
    reassign: int = 1                   # epochs between re-clusterings
    cluster_weight: float = 1.0         # weight of CE(classifier(h), pseudo_label[index])
    metric_weight: float = 1.0          # weight of the siamese metric BCE
    pca_dim: int = 128                  # PCA-whitening dimension before k-means (0 = feature dim)
    kmeans_iters: int = 20
    # spcl: the released code's defects, fixed by default; the other position reproduces them
    classifier_outputs: str = "prototypes"  # prototypes | classes (released: num_classes outputs)
    pseudo_label_order: str = "index"       # index | loader (released: labels in its sampler's draw order)
    pair_labels: str = "pseudo"             # pseudo | true (released: metric pairs from ground-truth classes)


@dataclass
class OptimConfig:
    name: str = "sgd"            # sgd | lars
    lr: float = 0.5              # base lr, scaled by global batch / 256 when scale_lr
    scale_lr: bool = True
    momentum: float = 0.9
    weight_decay: float = 1e-5
    warmup_epochs: float = 10.0  # may be fractional (1% of 200 epochs = 2.0)
    min_lr: float = 0.0
    trust_coefficient: float = 1e-3   # lars
    exclude_bn_bias: bool = True      # no weight decay / adaptation for BN and biases
    predictor_fixed_lr: bool = True   # simsiam: predictor lr not scheduled
    probe_lr: float = 0.1             # online linear probe (its own fixed lr)


@dataclass
class TrainConfig:
    epochs: int = 100
    seed: int = 0
    device: str = "auto"         # auto | cpu | cuda
    precision: str = "auto"      # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    compile: bool = False
    eval_every: int = 1          # epochs between evaluations (the last epoch always evaluates)
    knn_k: int = 20
    knn_temperature: float = 0.07
    checkpoint_every: int = 1
    resume: bool = True          # resume from out/checkpoints/last.pt when present
    log_every: int = 50          # steps between host-synchronised metric reads
    progress: str = "auto"       # auto (a bar on a terminal, quiet otherwise) | true | false


@dataclass
class ScaleConfig:
    workers: int = 1
    use_gpu: str = "auto"        # auto | true | false
    cpus_per_worker: int = 1
    gpus_per_worker: float = 1.0
    max_failures: int = 0
    sync_bn: bool = False
    num_to_keep: int = 2


@dataclass
class TrackingConfig:
    wandb: str = "auto"          # auto (online with an API key, else offline) | online | offline | disabled
    project: str = "mpcl"
    entity: str = ""
    name: str = ""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    out: str = "runs/default"


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "out"}

CHOICES: dict[str, tuple[str, ...]] = {
    "data.loader": ("torch", "ffcv"),
    "optim.name": ("sgd", "lars"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "bf16", "fp16", "fp32"),
    "train.progress": ("auto", "true", "false"),
    "scale.use_gpu": ("auto", "true", "false"),
    "tracking.wandb": ("auto", "online", "offline", "disabled"),
    "method.bank_dtype": ("float32", "bfloat16"),
    "method.momentum_schedule": ("constant", "cosine"),
    "method.mode": ("unsupervised", "supervised"),
    "method.attention_target": ("loss", "alignment"),
    "method.classifier_outputs": ("prototypes", "classes"),
    "method.pseudo_label_order": ("index", "loader"),
    "method.pair_labels": ("pseudo", "true"),
}

# (key, lower, upper, lower inclusive, upper inclusive)
RANGES = [
    ("method.temperature", 0.0, None, False, True),
    ("method.attention_temperature", 0.0, None, False, True),
    ("method.attention_weight", 0.0, 1.0, True, True),
    ("method.bank_mix", 0.0, 1.0, True, True),
    ("method.bank_warmup_epochs", 0, None, True, True),
    ("method.barlow_lambda", 0.0, None, True, True),
    ("method.scale_loss", 0.0, None, False, True),
    ("method.momentum", 0.0, 1.0, True, True),
    ("method.queue_size", 1, None, True, True),
    ("method.num_networks", 1, None, True, True),
    ("method.alpha", 0.0, None, True, True),
    ("method.beta", 0.0, None, True, True),
    ("method.gamma", 0.0, None, True, True),
    ("method.lam", 0.0, None, True, True),
    ("method.kd_temperature", 0.0, None, False, True),
    ("method.embed_dim", 1, None, True, True),
    ("method.eval_network", 0, None, True, True),
    ("method.num_prototypes", 2, None, True, True),
    ("method.reassign", 1, None, True, True),
    ("method.cluster_weight", 0.0, None, True, True),
    ("method.metric_weight", 0.0, None, True, True),
    ("method.pca_dim", 0, None, True, True),
    ("method.kmeans_iters", 1, None, True, True),
    ("data.num_small_crops", 0, None, True, True),
    ("data.small_crop_size", 0, None, True, True),
    ("data.subset", 0, None, True, True),
    ("data.val_subset", 0, None, True, True),
    ("data.batch_size", 1, None, True, True),
    ("data.num_workers", 0, None, True, True),
    ("data.crop_scale_min", 0.0, 1.0, False, True),
    ("data.jitter_prob", 0.0, 1.0, True, True),
    ("data.grayscale_prob", 0.0, 1.0, True, True),
    ("data.blur_prob", 0.0, 1.0, True, True),
    ("data.solarize_prob", 0.0, 1.0, True, True),
    ("data.jitter_strength", 0.0, None, True, True),
    ("optim.lr", 0.0, None, False, True),
    ("optim.weight_decay", 0.0, None, True, True),
    ("optim.momentum", 0.0, 1.0, True, False),
    ("optim.warmup_epochs", 0.0, None, True, True),
    ("optim.min_lr", 0.0, None, True, True),
    ("optim.probe_lr", 0.0, None, False, True),
    ("train.epochs", 1, None, True, True),
    ("train.eval_every", 1, None, True, True),
    ("train.checkpoint_every", 1, None, True, True),
    ("train.knn_k", 1, None, True, True),
    ("train.knn_temperature", 0.0, None, False, True),
    ("train.log_every", 1, None, True, True),
    ("scale.workers", 1, None, True, True),
    ("scale.cpus_per_worker", 1, None, True, True),
    ("scale.gpus_per_worker", 0.0, None, True, True),
    ("scale.max_failures", -1, None, True, True),
    ("scale.num_to_keep", 1, None, True, True),
    ("model.projector_hidden", 1, None, True, True),
    ("model.projector_out", 1, None, True, True),
    ("model.predictor_hidden", 1, None, True, True),
]


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, typ: Any) -> Any:
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
    elif typing.get_origin(typ) in (list, tuple):
        if isinstance(value, (list, tuple)):
            return type(value)(value)
    else:  # pragma: no cover - only the types above are used
        return value
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{key}={value!r}: expected {name}, got {type(value).__name__}")


# other spellings accepted for a key (``lambda`` is a Python keyword, so not a field name)
ALIASES = {"method.lambda": "method.barlow_lambda"}


def _apply(cfg: Config, key: str, value: Any) -> None:
    key = ALIASES.get(key, key)
    parts = key.split(".")
    if parts == ["out"]:
        cfg.out = _coerce("out", value, str)
        return
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"{key}: unknown key; sections are {', '.join(SECTIONS)} "
                          "(as section.key) and out")
    section_name, name = parts
    section = getattr(cfg, section_name)
    types_ = _field_types(type(section))
    if name not in types_:
        raise ConfigError(f"{key}: unknown key; {section_name} has {', '.join(types_)}")
    setattr(section, name, _coerce(key, value, types_[name]))


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


def load(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Defaults <- YAML file <- overrides; validated. Raises ConfigError."""
    cfg = Config()
    if path is not None:
        from mpcl.presets import read_preset

        tree = read_preset(path)
        for key, value in flatten(tree).items():
            _apply(cfg, key, value)
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        _apply(cfg, key, value)
    validate(cfg)
    return cfg


# every float-typed key, as "section.key"
FLOAT_KEYS = [f"{section}.{name}" for section, cls in _field_types(Config).items() if section != "out"
              for name, typ in _field_types(cls).items() if typ is float]


def get(cfg: Config, key: str) -> Any:
    if key == "out":
        return cfg.out
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def validate(cfg: Config) -> None:
    from mpcl.data.datasets import DATASETS
    from mpcl.methods import METHODS
    from mpcl.models import BACKBONES

    for key in FLOAT_KEYS:  # NaN and inf pass every range comparison below
        if not math.isfinite(get(cfg, key)):
            raise ConfigError(f"{key}={get(cfg, key)!r}: must be a finite number")
    registries = {"method.name": METHODS, "model.backbone": BACKBONES, "data.dataset": DATASETS}
    for key, registry in registries.items():
        if get(cfg, key) not in registry:
            raise ConfigError(f"{key}={get(cfg, key)!r}: unknown; allowed: {', '.join(sorted(registry))}")
    for key, allowed in CHOICES.items():
        if get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={get(cfg, key)!r}: allowed: {', '.join(allowed)}")
    for key, lo, hi, lo_inc, hi_inc in RANGES:
        v = get(cfg, key)
        bad = (lo is not None and (v < lo if lo_inc else v <= lo)) or (hi is not None and (v > hi if hi_inc else v >= hi))
        if bad:
            lo_s = "" if lo is None else f"{lo} {'<=' if lo_inc else '<'} "
            hi_s = "" if hi is None else f" {'<=' if hi_inc else '<'} {hi}"
            if lo is not None and hi is None:
                rule = f"must be {'>=' if lo_inc else '>'} {lo}"
            else:
                rule = f"must satisfy {lo_s}value{hi_s}"
            raise ConfigError(f"{key}={v!r}: {rule}")
    if not cfg.out:
        raise ConfigError("out='': the run directory must be set")
    if cfg.data.batch_size % cfg.scale.workers:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size}: must be a multiple of "
                          f"scale.workers={cfg.scale.workers}")
    _validate_methods(cfg, METHODS)


def _validate_methods(cfg: Config, methods: dict) -> None:
    """Cross-key rules of the issue-5 methods and of multi-crop / class-grouped batches."""
    m, d = cfg.method, cfg.data
    if d.num_small_crops:
        if not getattr(methods[m.name], "supports_multi_crop", False):
            allowed = sorted(k for k, v in methods.items() if getattr(v, "supports_multi_crop", False))
            raise ConfigError(f"data.num_small_crops={d.num_small_crops}: multi-crop is supported by "
                              f"{', '.join(allowed)}, not method.name={m.name!r}")
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
    if m.name == "spcl" and m.classifier_outputs == "classes":
        from mpcl.data.datasets import DATASETS

        classes = DATASETS[d.dataset].num_classes
        if m.num_prototypes > classes:
            raise ConfigError(f"method.classifier_outputs='classes': method.num_prototypes={m.num_prototypes} "
                              f"needs at most {d.dataset}'s {classes} classifier outputs (or prototypes)")
    if m.name == "mcl" and m.eval_network >= m.num_networks:
        raise ConfigError(f"method.eval_network={m.eval_network}: must be < method.num_networks={m.num_networks}")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(tree: dict[str, Any]) -> Config:
    """Inverse of ``to_dict`` (validated)."""
    return load(None, flatten(tree))


def dump(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = ["Config", "ConfigError", "load", "validate", "dump", "to_dict", "from_dict", "flatten",
           "parse_override", "get"]
