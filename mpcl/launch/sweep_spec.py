"""A sweep file: what it holds, read and validated into a ``SweepSpec``, and the config of
each trial (the base preset, the fixed overrides, the resources and the searched values).

A sweep file (``sweeps/*.yaml``)::

    name: fmnist_demo
    base: configs/fmnist_simclr_attn.yaml      # preset the trials start from
    overrides: {model.backbone: small_cnn}      # fixed for every trial
    space:                                      # searched: uniform | loguniform | int | choice
      method.temperature: {type: loguniform, low: 0.05, high: 1.0}
      method.attention_weight: {type: uniform, low: 0.0, high: 1.0}
    points: [{method.temperature: 0.5, method.attention_weight: 1.0}]   # optional: tried first
    objective: {metric: val/knn_top1, mode: max}   # or a list of them: a Pareto front
    num_samples: 8
    max_concurrent: 2
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: none}, or {type: pbt, ...}
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}  # per trial (scale.*)
    sampler: {type: tpe, seed: 0, multivariate: true}   # tpe | random | cmaes | nsga2 (population_size)
    out: runs/sweeps/fmnist_demo
    confirm: {top_k: 3, seeds: 3}   # optional: the top 3 and points[0] again on 3 fresh seeds

Every error in the file is one line naming the key, raised before Ray starts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpcl.config import ConfigError, parse_override, read_yaml_mapping
from mpcl.config.compose import load
from mpcl.config.presets import find
from mpcl.launch import LaunchError
from mpcl.launch.confirm import parse_confirm

SPACE_TYPES = ("uniform", "loguniform", "int", "choice")
SAMPLERS = ("tpe", "random", "cmaes", "nsga2")
SINGLE_OBJECTIVE_SAMPLERS = {"cmaes": "CMA-ES"}
SWEEP_KEYS = {"name", "base", "overrides", "space", "points", "objective", "num_samples", "max_concurrent",
              "scheduler", "resources", "sampler", "out", "description", "confirm"}
COMMAND_LINE_KEYS = ("num_samples", "max_concurrent", "out")
ASHA_KEYS = {"type", "grace_period", "reduction_factor", "max_t"}
SCHEDULER_KEYS = {"asha": ASHA_KEYS, "none": ASHA_KEYS,   # none ignores asha's settings
                  "pbt": {"type", "perturbation_interval", "quantile_fraction", "resample_probability", "synch"}}
# What PBT may change between two epochs of a trial: knobs read afresh from the config when a
# trial restarts from a checkpoint, that shape no tensor, no optimizer state and no batch.
PBT_MUTABLE = ("optim.lr", "optim.momentum", "optim.weight_decay", "optim.min_lr", "method.temperature",
               "method.attention_weight", "method.bank_mix")


@dataclass
class SweepSpec:
    name: str
    base: str | None
    overrides: dict[str, Any]
    space: dict[str, dict[str, Any]]
    points: list[dict[str, Any]] = field(default_factory=list)
    metric: str = "val/knn_top1"
    mode: str = "max"
    num_samples: int = 8
    max_concurrent: int = 1
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "asha"})
    resources: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": 0, "multivariate": True})
    out: str = "runs/sweeps/default"
    confirm: dict[str, int] | None = None  # {top_k, seeds}: mpcl.launch.confirm
    source: dict[str, Any] = field(default_factory=dict)
    study: str = ""                  # the Optuna storage URL (set by run_sweep)
    # (metric, mode) of every objective, in the file's order; metric and mode are the first's
    objectives: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        self.objectives = self.objectives or [(self.metric, self.mode)]
        self.metric, self.mode = self.objectives[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    # -- derived ---------------------------------------------------------------------------
    def trial_overrides(self, params: dict[str, Any], out: str | None = None) -> dict[str, Any]:
        o = dict(self.overrides)
        for k, v in self.resources.items():
            o[f"scale.{k}"] = v
        if any(metric.startswith("val/") for metric, _ in self.objectives):
            o["train.eval_every"] = 1
        o.update(params)
        if out is not None:
            o["out"] = out
        return o

    def config(self, params: dict[str, Any], out: str | None = None):
        return load(self.base, self.trial_overrides(params, out))

    @property
    def epochs(self) -> int:
        return self.config(self.example_params()).train.epochs

    def example_params(self) -> dict[str, Any]:
        ex = {}
        for k, d in self.space.items():
            if d["type"] == "choice":
                ex[k] = d["values"][0]
            elif d["type"] == "int":
                ex[k] = int(d["low"])
            elif d["type"] == "loguniform":
                ex[k] = math.sqrt(float(d["low"]) * float(d["high"]))
            else:
                ex[k] = (float(d["low"]) + float(d["high"])) / 2
        return ex


def _fail(path, msg: str) -> LaunchError:
    return LaunchError(f"{path}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mapping(path, tree: dict, key: str, allowed: set[str] | None = None) -> dict:
    """``tree[key]`` as a mapping ({} when absent), its keys within ``allowed``."""
    value = tree.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, f"{key}={value!r}: expected a mapping")
    unknown = set(value) - allowed if allowed is not None else set()
    if unknown:
        raise _fail(path, f"{key}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    return value


def _check(path, key: str, value: Any, ok: bool, what: str) -> None:
    if not ok:
        raise _fail(path, f"{key}={value!r}: {what}")


def _check_space(path, space: Any) -> None:
    if not isinstance(space, dict) or not space:
        raise _fail(path, "space: at least one searched key (key: {type, low, high} or {type: choice, values})")
    for key, d in space.items():
        if not isinstance(d, dict) or d.get("type") not in SPACE_TYPES:
            raise _fail(path, f"space.{key}: type must be one of {', '.join(SPACE_TYPES)}")
        if d["type"] == "choice":
            if not isinstance(d.get("values"), list) or not d["values"]:
                raise _fail(path, f"space.{key}: choice needs a non-empty list 'values'")
            continue
        lo, hi = d.get("low"), d.get("high")
        if isinstance(lo, str) or isinstance(hi, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                lo, hi = float(lo), float(hi)
            except ValueError:
                pass
        if not (_is_number(lo) and _is_number(hi)):
            raise _fail(path, f"space.{key}: {d['type']} needs numeric 'low' and 'high'")
        if d["type"] == "int" and not (float(lo).is_integer() and float(hi).is_integer()):
            raise _fail(path, f"space.{key}: int needs whole 'low' and 'high' (got {lo}, {hi})")
        if not lo < hi or (d["type"] == "loguniform" and lo <= 0):
            raise _fail(path, f"space.{key}: need 0 < low < high for loguniform, low < high otherwise "
                              f"(got {lo}, {hi})")
        d["low"], d["high"] = lo, hi


def _check_point(path, i: int, point: Any, space: dict) -> None:
    if not isinstance(point, dict):
        raise _fail(path, f"points[{i}]={point!r}: expected a mapping of searched keys to values")
    if set(point) - set(space):
        raise _fail(path, f"points[{i}]: keys {sorted(set(point) - set(space))} are not in space")
    for key, v in point.items():
        d, where = space[key], f"points[{i}].{key}"
        if d["type"] == "choice":
            _check(path, where, v, v in d["values"], f"not one of space.{key}.values {d['values']}")
        elif d["type"] == "int":
            _check(path, where, v, _is_int(v) and d["low"] <= v <= d["high"],
                   f"must be a whole number in space.{key} [{d['low']:g}, {d['high']:g}]")
        else:
            _check(path, where, v, _is_number(v) and d["low"] <= v <= d["high"],
                   f"must be a number in space.{key} [{d['low']:g}, {d['high']:g}]")


def _check_scheduler(path, scheduler: dict) -> None:
    _check(path, "scheduler.type", scheduler.get("type"), scheduler.get("type") in SCHEDULER_KEYS,
           f"allowed: {', '.join(SCHEDULER_KEYS)}")
    unknown = set(scheduler) - SCHEDULER_KEYS[scheduler["type"]]
    if unknown:
        raise _fail(path, f"scheduler: {', '.join(sorted(unknown))} not a setting of type {scheduler['type']}; "
                          f"allowed: {', '.join(sorted(SCHEDULER_KEYS[scheduler['type']]))}")
    if scheduler["type"] == "pbt":
        _check_pbt_settings(path, scheduler)
    for key in ("grace_period", "max_t"):
        if key in scheduler:
            _check(path, f"scheduler.{key}", scheduler[key], _is_int(scheduler[key]) and scheduler[key] >= 1,
                   "must be a whole number >= 1")
    if "reduction_factor" in scheduler:
        rf = scheduler["reduction_factor"]
        _check(path, "scheduler.reduction_factor", rf, _is_number(rf) and rf > 1, "must be a number > 1")
    if scheduler.get("grace_period", 1) > scheduler.get("max_t", math.inf):
        raise _fail(path, f"scheduler.grace_period={scheduler['grace_period']}: must be <= "
                          f"scheduler.max_t={scheduler['max_t']}")


def _check_pbt_settings(path, scheduler: dict) -> None:
    interval = scheduler.setdefault("perturbation_interval", 1)
    _check(path, "scheduler.perturbation_interval", interval, _is_int(interval) and interval >= 1,
           "must be a whole number of epochs >= 1")
    quantile = scheduler.setdefault("quantile_fraction", 0.25)
    _check(path, "scheduler.quantile_fraction", quantile, _is_number(quantile) and 0 < quantile <= 0.5,
           "must be a number in (0, 0.5]")
    resample = scheduler.setdefault("resample_probability", 0.25)
    _check(path, "scheduler.resample_probability", resample, _is_number(resample) and 0 <= resample <= 1,
           "must be a number in [0, 1]")
    synch = scheduler.setdefault("synch", False)
    _check(path, "scheduler.synch", synch, isinstance(synch, bool), "must be true or false")


def _check_pbt_sweep(path, tree: dict, space: dict, sampler: dict) -> None:
    """PBT changes the searched knobs in the middle of a trial: only those in ``PBT_MUTABLE``.
    Its population is drawn at random (Ray runs PBT without a search algorithm), and its trials
    follow a knob schedule that the confirmation stage could not retrain."""
    for key in space:
        if key not in PBT_MUTABLE:
            raise _fail(path, f"space.{key}: scheduler pbt cannot change it in the middle of a run (it would "
                              f"change tensor shapes, optimizer state or the data); pbt may mutate only "
                              f"{', '.join(PBT_MUTABLE)}")
    _check(path, "sampler.type", sampler["type"], sampler["type"] == "random",
           "scheduler pbt draws its population at random: sampler.type must be random")
    population = tree.get("num_samples", 8)
    _check(path, "num_samples", population, population >= 2, "scheduler pbt needs a population of at least 2")
    if tree.get("confirm") is not None:
        raise _fail(path, "confirm: not with scheduler pbt (a pbt trial follows a knob schedule that "
                          "confirm, which retrains fixed knobs, cannot repeat)")


def _check_sampler(path, sampler: dict) -> None:
    _check(path, "sampler.type", sampler["type"], sampler["type"] in SAMPLERS, f"allowed: {', '.join(SAMPLERS)}")
    seed = sampler.get("seed")
    _check(path, "sampler.seed", seed, seed is None or _is_int(seed), "must be a whole number or null")
    _check(path, "sampler.multivariate", sampler["multivariate"], isinstance(sampler["multivariate"], bool),
           "must be true or false")
    if "n_startup_trials" in sampler:
        n = sampler["n_startup_trials"]
        _check(path, "sampler.n_startup_trials", n, _is_int(n) and n >= 0, "must be a whole number >= 0")
    if "population_size" in sampler:
        n = sampler["population_size"]
        _check(path, "sampler.population_size", n, sampler["type"] == "nsga2", "only for sampler.type nsga2")
        _check(path, "sampler.population_size", n, _is_int(n) and n >= 2, "must be a whole number >= 2")


def _objectives(path, tree: dict) -> list[tuple[str, str]]:
    """The sweep file's ``objective``: one mapping, or a list of them (several objectives)."""
    value = tree.get("objective")
    if not isinstance(value, list):
        items, names = [_mapping(path, tree, "objective", {"metric", "mode"})], ["objective"]
    elif not value:
        raise _fail(path, "objective=[]: expected {metric, mode} or a non-empty list of them")
    else:
        items, names = value, [f"objective[{i}]" for i in range(len(value))]
    objectives = []
    for item, name in zip(items, names):
        item = _mapping(path, {name: item}, name, {"metric", "mode"})
        metric, mode = item.get("metric", "val/knn_top1"), item.get("mode", "max")
        _check(path, f"{name}.mode", mode, mode in ("max", "min"), "allowed: max, min")
        _check(path, f"{name}.metric", metric, isinstance(metric, str), "expected a metric name")
        _check(path, f"{name}.metric", metric, metric not in [m for m, _ in objectives], "listed twice")
        objectives.append((metric, mode))
    return objectives


def _check_multi_objective(path, scheduler: dict, sampler: dict) -> None:
    """Several objectives: no trial is stopped early (a scheduler ranks trials on one metric),
    and the sampler must search for a Pareto front."""
    _check(path, "scheduler.type", scheduler["type"], scheduler["type"] == "none",
           "several objectives need scheduler {type: none}: a scheduler stops trials ranked on one metric")
    _check(path, "sampler.type", sampler["type"], sampler["type"] not in SINGLE_OBJECTIVE_SAMPLERS,
           f"{SINGLE_OBJECTIVE_SAMPLERS.get(sampler['type'])} optimizes one objective; "
           "for several use tpe or nsga2")


def apply_overrides(path, tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``run.py sweep FILE key=value ...``: ``num_samples`` / ``max_concurrent`` / ``out``
    replace the file's; ``section.key=value`` joins its ``overrides`` (every trial)."""
    tree = {**tree, "overrides": dict(_mapping(path, tree, "overrides"))}
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as e:
            raise _fail(path, str(e)) from None
        if key in COMMAND_LINE_KEYS:
            tree[key] = value
        elif "." in key:
            tree["overrides"][key] = value
        else:
            raise _fail(path, f"{text}: on the command line: {', '.join(COMMAND_LINE_KEYS)} or section.key=value")
    return tree


def _read_tree(path: Path, overrides: list[str] | None) -> dict[str, Any]:
    """The sweep file as a mapping, command-line overrides applied, its top-level keys checked."""
    tree = read_yaml_mapping(path, LaunchError, f"{path}: no such sweep file", "a mapping")
    if overrides:
        tree = apply_overrides(path, tree, overrides)
    unknown = set(tree) - SWEEP_KEYS
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"allowed: {', '.join(sorted(SWEEP_KEYS))}")
    for key in ("name", "out", "description"):
        if key in tree:
            _check(path, key, tree[key], isinstance(tree[key], str) and tree[key] != "", "expected a non-empty string")
    for key in ("num_samples", "max_concurrent"):
        if key in tree:
            _check(path, key, tree[key], _is_int(tree[key]) and tree[key] >= 1, "must be a whole number >= 1")
    return tree


def _base_path(path: Path, base: Any) -> str:
    """The preset every trial starts from: a path as given, else beside the sweep file, else a
    shipped preset of that name (``configs/fmnist_simclr_attn.yaml`` or ``fmnist_simclr_attn``)."""
    if base is None:
        raise _fail(path, "base: missing (the config preset every trial starts from, e.g. "
                          "base: configs/fmnist_simclr_attn.yaml)")
    _check(path, "base", base, isinstance(base, str) and base != "", "expected the path of a config preset")
    beside = path.parent / base
    try:
        return str(beside if not Path(base).is_file() and beside.is_file() else find("preset", base, "base"))
    except ConfigError:
        raise _fail(path, f"base={base!r}: no such file, and no shipped preset of that name") from None


def _check_trial_configs(path: Path, spec: SweepSpec) -> None:
    """Every key and the extremes of the space make a valid config, and the method reports the
    objective."""
    from mpcl.engine.loop import reported_metrics

    example = spec.example_params()
    try:
        cfg = spec.config(example, out="/tmp/x")
        for key, d in spec.space.items():
            for v in (d["values"] if d["type"] == "choice" else [d["low"], d["high"]]):
                spec.config({**example, key: int(v) if d["type"] == "int" else v}, out="/tmp/x")
        for point in spec.points:
            spec.config({**example, **point}, out="/tmp/x")
    except ConfigError as e:
        raise _fail(path, str(e)) from None
    reported = reported_metrics(cfg)
    listed = isinstance(spec.source.get("objective"), list)
    for i, (metric, _) in enumerate(spec.objectives):
        if metric not in reported:
            name = f"objective[{i}]" if listed else "objective"
            raise _fail(path, f"{name}.metric={metric!r}: method {cfg.method.name} does not report it; "
                              f"it reports {', '.join(reported)}")


def load_sweep(path: str | os.PathLike, out: str | None = None, overrides: list[str] | None = None) -> SweepSpec:
    """Read and validate a sweep file (a path, or the name of a shipped one: ``fmnist_demo``):
    every error is one line naming the key, before Ray starts."""
    try:
        path = find("sweep", path, "sweep file")
    except ConfigError as e:
        raise LaunchError(str(e)) from None
    tree = _read_tree(path, overrides)
    base = _base_path(path, tree.get("base"))
    overrides, resources = _mapping(path, tree, "overrides"), _mapping(path, tree, "resources")
    space = tree.get("space") or {}
    _check_space(path, space)
    points = tree.get("points") or []
    _check(path, "points", points, isinstance(points, list), "expected a list of mappings")
    for i, point in enumerate(points):
        _check_point(path, i, point, space)
    objectives = _objectives(path, tree)
    scheduler = {"type": "asha", **_mapping(path, tree, "scheduler", set.union(*SCHEDULER_KEYS.values()))}
    _check_scheduler(path, scheduler)
    sampler = {"type": "random" if scheduler["type"] == "pbt" else "tpe", "seed": 0, "multivariate": True,
               **_mapping(path, tree, "sampler", {"type", "seed", "multivariate", "n_startup_trials",
                                                  "population_size"})}
    _check_sampler(path, sampler)
    if len(objectives) > 1:
        _check_multi_objective(path, scheduler, sampler)
    if scheduler["type"] == "pbt":
        _check_pbt_sweep(path, tree, space, sampler)
    spec = SweepSpec(
        name=tree.get("name") or path.stem, base=base, overrides=dict(overrides),
        space=space, points=points, objectives=objectives, num_samples=tree.get("num_samples", 8),
        max_concurrent=tree.get("max_concurrent", 1), scheduler=scheduler,
        resources=dict(resources), sampler=sampler,
        out=out or tree.get("out") or f"runs/sweeps/{path.stem}", source=tree,
        confirm=parse_confirm(path, tree.get("confirm"), bool(points)),
    )
    _check_trial_configs(path, spec)
    return spec
