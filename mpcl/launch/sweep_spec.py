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
from mpcl.launch.sweep_rules import (
    SCHEDULER_KEYS,
    check,
    check_multi_objective,
    check_pbt_sweep,
    check_point,
    check_sampler,
    check_scheduler,
    check_space,
    fail,
    is_int,
    mapping,
    read_objectives,
)

SWEEP_KEYS = {"name", "base", "overrides", "space", "points", "objective", "num_samples", "max_concurrent",
              "scheduler", "resources", "sampler", "out", "description", "confirm"}
COMMAND_LINE_KEYS = ("num_samples", "max_concurrent", "out")
COMMAND_LINE_SECTIONS = ("scheduler", "sampler")   # scheduler.grace_period=2: one setting of the file's


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


def apply_overrides(path, tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``run.py sweep FILE key=value ...``: ``num_samples`` / ``max_concurrent`` / ``out``
    replace the file's; ``scheduler.X`` / ``sampler.X`` replace one setting of the file's
    scheduler or sampler; any other ``section.key=value`` joins its ``overrides`` (every trial)."""
    tree = {**tree, "overrides": dict(mapping(path, tree, "overrides"))}
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as e:
            raise fail(path, str(e)) from None
        section, _, setting = key.partition(".")
        if key in COMMAND_LINE_KEYS:
            tree[key] = value
        elif section in COMMAND_LINE_SECTIONS and setting:
            tree[section] = {**mapping(path, tree, section), setting: value}
        elif "." in key:
            tree["overrides"][key] = value
        else:
            raise fail(path, f"{text}: on the command line: {', '.join(COMMAND_LINE_KEYS)}, "
                             f"scheduler.X, sampler.X or section.key=value")
    return tree


def _read_tree(path: Path, overrides: list[str] | None) -> dict[str, Any]:
    """The sweep file as a mapping, command-line overrides applied, its top-level keys checked."""
    tree = read_yaml_mapping(path, LaunchError, f"{path}: no such sweep file", "a mapping")
    if overrides:
        tree = apply_overrides(path, tree, overrides)
    unknown = set(tree) - SWEEP_KEYS
    if unknown:
        raise fail(path, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                         f"allowed: {', '.join(sorted(SWEEP_KEYS))}")
    for key in ("name", "out", "description"):
        if key in tree:
            check(path, key, tree[key], isinstance(tree[key], str) and tree[key] != "", "expected a non-empty string")
    for key in ("num_samples", "max_concurrent"):
        if key in tree:
            check(path, key, tree[key], is_int(tree[key]) and tree[key] >= 1, "must be a whole number >= 1")
    return tree


def _base_path(path: Path, base: Any) -> str:
    """The preset every trial starts from: a path as given, else beside the sweep file, else a
    shipped preset of that name (``configs/fmnist_simclr_attn.yaml`` or ``fmnist_simclr_attn``)."""
    if base is None:
        raise fail(path, "base: missing (the config preset every trial starts from, e.g. "
                         "base: configs/fmnist_simclr_attn.yaml)")
    check(path, "base", base, isinstance(base, str) and base != "", "expected the path of a config preset")
    beside = path.parent / base
    try:
        return str(beside if not Path(base).is_file() and beside.is_file() else find("preset", base, "base"))
    except ConfigError:
        raise fail(path, f"base={base!r}: no such file, and no shipped preset of that name") from None


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
        raise fail(path, str(e)) from None
    reported = reported_metrics(cfg)
    listed = isinstance(spec.source.get("objective"), list)
    for i, (metric, _) in enumerate(spec.objectives):
        if metric not in reported:
            name = f"objective[{i}]" if listed else "objective"
            raise fail(path, f"{name}.metric={metric!r}: method {cfg.method.name} does not report it; "
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
    overrides, resources = mapping(path, tree, "overrides"), mapping(path, tree, "resources")
    space = tree.get("space") or {}
    check_space(path, space)
    points = tree.get("points") or []
    check(path, "points", points, isinstance(points, list), "expected a list of mappings")
    for i, point in enumerate(points):
        check_point(path, i, point, space)
    objectives = read_objectives(path, tree)
    scheduler = {"type": "asha", **mapping(path, tree, "scheduler", set.union(*SCHEDULER_KEYS.values()))}
    check_scheduler(path, scheduler)
    sampler = {"type": "random" if scheduler["type"] == "pbt" else "tpe", "seed": 0, "multivariate": True,
               **mapping(path, tree, "sampler", {"type", "seed", "multivariate", "n_startup_trials",
                                                  "population_size"})}
    check_sampler(path, sampler)
    if len(objectives) > 1:
        check_multi_objective(path, scheduler, sampler)
    if scheduler["type"] == "pbt":
        check_pbt_sweep(path, tree, space, sampler)
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
