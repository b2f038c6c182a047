"""The rules of a sweep file's search: its space and points, its scheduler (``asha``,
``none``, ``pbt``), its sampler, and its objective or objectives. Each rule raises one
``LaunchError`` line naming the key (``<file>: <key>=<value>: <why>``), before Ray starts;
``sweep_spec.load_sweep`` applies them in order.
"""

from __future__ import annotations

import math
from typing import Any

from mpcl.launch import LaunchError

SPACE_TYPES = ("uniform", "loguniform", "int", "choice")
SAMPLERS = ("tpe", "random", "cmaes", "nsga2")
SINGLE_OBJECTIVE_SAMPLERS = {"cmaes": "CMA-ES"}
ASHA_KEYS = {"type", "grace_period", "reduction_factor", "max_t"}
SCHEDULER_KEYS = {"asha": ASHA_KEYS, "none": ASHA_KEYS,   # none ignores asha's settings
                  "pbt": {"type", "perturbation_interval", "quantile_fraction", "resample_probability", "synch"}}
# What PBT may change between two epochs of a trial: knobs read afresh from the config when a
# trial restarts from a checkpoint, that shape no tensor, no optimizer state and no batch.
PBT_MUTABLE = ("optim.lr", "optim.momentum", "optim.weight_decay", "optim.min_lr", "method.temperature",
               "method.attention_weight", "method.bank_mix")


def fail(path, msg: str) -> LaunchError:
    return LaunchError(f"{path}: {msg}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mapping(path, tree: dict, key: str, allowed: set[str] | None = None) -> dict:
    """``tree[key]`` as a mapping ({} when absent), its keys within ``allowed``."""
    value = tree.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(path, f"{key}={value!r}: expected a mapping")
    unknown = set(value) - allowed if allowed is not None else set()
    if unknown:
        raise fail(path, f"{key}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    return value


def check(path, key: str, value: Any, ok: bool, what: str) -> None:
    if not ok:
        raise fail(path, f"{key}={value!r}: {what}")


def check_space(path, space: Any) -> None:
    if not isinstance(space, dict) or not space:
        raise fail(path, "space: at least one searched key (key: {type, low, high} or {type: choice, values})")
    for key, d in space.items():
        if not isinstance(d, dict) or d.get("type") not in SPACE_TYPES:
            raise fail(path, f"space.{key}: type must be one of {', '.join(SPACE_TYPES)}")
        if d["type"] == "choice":
            if not isinstance(d.get("values"), list) or not d["values"]:
                raise fail(path, f"space.{key}: choice needs a non-empty list 'values'")
            continue
        lo, hi = d.get("low"), d.get("high")
        if isinstance(lo, str) or isinstance(hi, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                lo, hi = float(lo), float(hi)
            except ValueError:
                pass
        if not (is_number(lo) and is_number(hi)):
            raise fail(path, f"space.{key}: {d['type']} needs numeric 'low' and 'high'")
        if d["type"] == "int" and not (float(lo).is_integer() and float(hi).is_integer()):
            raise fail(path, f"space.{key}: int needs whole 'low' and 'high' (got {lo}, {hi})")
        if not lo < hi or (d["type"] == "loguniform" and lo <= 0):
            raise fail(path, f"space.{key}: need 0 < low < high for loguniform, low < high otherwise "
                             f"(got {lo}, {hi})")
        d["low"], d["high"] = lo, hi


def check_point(path, i: int, point: Any, space: dict) -> None:
    if not isinstance(point, dict):
        raise fail(path, f"points[{i}]={point!r}: expected a mapping of searched keys to values")
    if set(point) - set(space):
        raise fail(path, f"points[{i}]: keys {sorted(set(point) - set(space))} are not in space")
    for key, v in point.items():
        d, where = space[key], f"points[{i}].{key}"
        if d["type"] == "choice":
            check(path, where, v, v in d["values"], f"not one of space.{key}.values {d['values']}")
        elif d["type"] == "int":
            check(path, where, v, is_int(v) and d["low"] <= v <= d["high"],
                  f"must be a whole number in space.{key} [{d['low']:g}, {d['high']:g}]")
        else:
            check(path, where, v, is_number(v) and d["low"] <= v <= d["high"],
                  f"must be a number in space.{key} [{d['low']:g}, {d['high']:g}]")


def check_scheduler(path, scheduler: dict) -> None:
    check(path, "scheduler.type", scheduler.get("type"), scheduler.get("type") in SCHEDULER_KEYS,
          f"allowed: {', '.join(SCHEDULER_KEYS)}")
    unknown = set(scheduler) - SCHEDULER_KEYS[scheduler["type"]]
    if unknown:
        raise fail(path, f"scheduler: {', '.join(sorted(unknown))} not a setting of type {scheduler['type']}; "
                         f"allowed: {', '.join(sorted(SCHEDULER_KEYS[scheduler['type']]))}")
    if scheduler["type"] == "pbt":
        check_pbt_settings(path, scheduler)
    for key in ("grace_period", "max_t"):
        if key in scheduler:
            check(path, f"scheduler.{key}", scheduler[key], is_int(scheduler[key]) and scheduler[key] >= 1,
                  "must be a whole number >= 1")
    if "reduction_factor" in scheduler:
        rf = scheduler["reduction_factor"]
        check(path, "scheduler.reduction_factor", rf, is_number(rf) and rf > 1, "must be a number > 1")
    if scheduler.get("grace_period", 1) > scheduler.get("max_t", math.inf):
        raise fail(path, f"scheduler.grace_period={scheduler['grace_period']}: must be <= "
                         f"scheduler.max_t={scheduler['max_t']}")


def check_pbt_settings(path, scheduler: dict) -> None:
    interval = scheduler.setdefault("perturbation_interval", 1)
    check(path, "scheduler.perturbation_interval", interval, is_int(interval) and interval >= 1,
          "must be a whole number of epochs >= 1")
    quantile = scheduler.setdefault("quantile_fraction", 0.25)
    check(path, "scheduler.quantile_fraction", quantile, is_number(quantile) and 0 < quantile <= 0.5,
          "must be a number in (0, 0.5]")
    resample = scheduler.setdefault("resample_probability", 0.25)
    check(path, "scheduler.resample_probability", resample, is_number(resample) and 0 <= resample <= 1,
          "must be a number in [0, 1]")
    synch = scheduler.setdefault("synch", False)
    check(path, "scheduler.synch", synch, isinstance(synch, bool), "must be true or false")


def check_pbt_sweep(path, tree: dict, space: dict, sampler: dict) -> None:
    """PBT changes the searched knobs in the middle of a trial: only those in ``PBT_MUTABLE``.
    Its population is drawn at random (Ray runs PBT without a search algorithm), and its trials
    follow a knob schedule that the confirmation stage could not retrain."""
    for key in space:
        if key not in PBT_MUTABLE:
            raise fail(path, f"space.{key}: scheduler pbt cannot change it in the middle of a run (it would "
                             f"change tensor shapes, optimizer state or the data); pbt may mutate only "
                             f"{', '.join(PBT_MUTABLE)}")
    check(path, "sampler.type", sampler["type"], sampler["type"] == "random",
          "scheduler pbt draws its population at random: sampler.type must be random")
    population = tree.get("num_samples", 8)
    check(path, "num_samples", population, population >= 2, "scheduler pbt needs a population of at least 2")
    if tree.get("confirm") is not None:
        raise fail(path, "confirm: not with scheduler pbt (a pbt trial follows a knob schedule that "
                         "confirm, which retrains fixed knobs, cannot repeat)")


def check_sampler(path, sampler: dict) -> None:
    check(path, "sampler.type", sampler["type"], sampler["type"] in SAMPLERS, f"allowed: {', '.join(SAMPLERS)}")
    seed = sampler.get("seed")
    check(path, "sampler.seed", seed, seed is None or is_int(seed), "must be a whole number or null")
    check(path, "sampler.multivariate", sampler["multivariate"], isinstance(sampler["multivariate"], bool),
          "must be true or false")
    if "n_startup_trials" in sampler:
        n = sampler["n_startup_trials"]
        check(path, "sampler.n_startup_trials", n, is_int(n) and n >= 0, "must be a whole number >= 0")
    if "population_size" in sampler:
        n = sampler["population_size"]
        check(path, "sampler.population_size", n, sampler["type"] == "nsga2", "only for sampler.type nsga2")
        check(path, "sampler.population_size", n, is_int(n) and n >= 2, "must be a whole number >= 2")


def read_objectives(path, tree: dict) -> list[tuple[str, str]]:
    """The sweep file's ``objective``: one mapping, or a list of them (several objectives)."""
    value = tree.get("objective")
    if not isinstance(value, list):
        items, names = [mapping(path, tree, "objective", {"metric", "mode"})], ["objective"]
    elif not value:
        raise fail(path, "objective=[]: expected {metric, mode} or a non-empty list of them")
    else:
        items, names = value, [f"objective[{i}]" for i in range(len(value))]
    objectives = []
    for item, name in zip(items, names):
        item = mapping(path, {name: item}, name, {"metric", "mode"})
        metric, mode = item.get("metric", "val/knn_top1"), item.get("mode", "max")
        check(path, f"{name}.mode", mode, mode in ("max", "min"), "allowed: max, min")
        check(path, f"{name}.metric", metric, isinstance(metric, str), "expected a metric name")
        check(path, f"{name}.metric", metric, metric not in [m for m, _ in objectives], "listed twice")
        objectives.append((metric, mode))
    return objectives


def check_multi_objective(path, scheduler: dict, sampler: dict) -> None:
    """Several objectives: no trial is stopped early (a scheduler ranks trials on one metric),
    and the sampler must search for a Pareto front."""
    check(path, "scheduler.type", scheduler["type"], scheduler["type"] == "none",
          "several objectives need scheduler {type: none}: a scheduler stops trials ranked on one metric")
    check(path, "sampler.type", sampler["type"], sampler["type"] not in SINGLE_OBJECTIVE_SAMPLERS,
          f"{SINGLE_OBJECTIVE_SAMPLERS.get(sampler['type'])} optimizes one objective; "
           "for several use tpe or nsga2")
