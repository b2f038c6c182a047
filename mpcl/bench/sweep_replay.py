"""The replay of ``bench sweep``: a search strategy run against the learning-curve table
instead of training.

A strategy is the sweep file with its sampler type and scheduler replaced; the searcher and
the scheduler are the objects a real sweep builds from it (``mpcl.launch.search``: Optuna's
sampler in ``StudySearch``, its study in memory; ``ASHAScheduler`` with the file's settings).
Only training is replaced: a suggested configuration becomes the nearest table configuration
(coordinates normalised to [0, 1], log-scaled for loguniform; choices must match) on a seed
drawn by the search seed's RNG, and its table curve is fed epoch by epoch as the results.
``num_samples`` trials start, at most ``max_concurrent`` at a time, all advancing one epoch per
round (so ASHA sees its rungs filled as in a sweep); with a budget, no trial starts once that
many trial-epochs are spent."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

from mpcl.bench.sweep_table import Table
from mpcl.launch.sweep_spec import SweepSpec
from mpcl.launch.worker import EPOCHS_KEY, OBJECTIVE_KEY


@dataclass(frozen=True)
class Strategy:
    """What replaces the file's ``sampler.type`` and ``scheduler.type`` (``none``, or the
    scheduler type with the file's other scheduler settings)."""
    sampler: str
    scheduler: str


# A new strategy (another sampler, another scheduler type of the sweep file) is one entry here.
STRATEGIES = {"random": Strategy("random", "none"), "tpe": Strategy("tpe", "none"),
              "random+asha": Strategy("random", "asha"), "tpe+asha": Strategy("tpe", "asha")}


def strategy_spec(spec: SweepSpec, strategy: Strategy, search_seed: int) -> SweepSpec:
    scheduler = {"type": "none"} if strategy.scheduler == "none" else {**spec.scheduler, "type": strategy.scheduler}
    return replace(spec, sampler={**spec.sampler, "type": strategy.sampler, "seed": search_seed},
                   scheduler=scheduler)


def _unit(d: dict[str, Any], v: float) -> float:
    lo, hi = float(d["low"]), float(d["high"])
    if d["type"] == "loguniform":
        return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (v - lo) / (hi - lo)


def nearest(space: dict[str, dict[str, Any]], configs: list[dict[str, Any]], params: dict[str, Any]) -> int:
    """The index of the configuration nearest ``params``: the same choices, the least Euclidean
    distance over the ranges in unit coordinates (log for loguniform); the first of ties."""
    def distance(config: dict[str, Any]) -> float:
        total = 0.0
        for k, d in space.items():
            if d["type"] == "choice":
                if config[k] != params[k]:
                    return math.inf
            else:
                total += (_unit(d, config[k]) - _unit(d, params[k])) ** 2
        return total

    distances = [distance(c) for c in configs]
    best = min(range(len(configs)), key=distances.__getitem__)
    if math.isinf(distances[best]):
        raise ValueError(f"table: no configuration with the choices of {params}")
    return best


@dataclass
class ReplayTrial:
    """A trial as the scheduler sees it (ASHA keys its rungs by ``trial_id``) and its table curve."""
    trial_id: str
    config: int
    curve: list[float]
    epochs: int = 0


@dataclass
class Replay:
    """One strategy on one search seed: ``trace`` holds (trial-epochs spent, the true objective
    of the configuration the sweep would pick then) each time a trial ended; ``picked`` is the
    table index of the final pick (None: no trial completed)."""
    strategy: str
    search_seed: int
    spent: int = 0
    picked: int | None = None
    trace: list[tuple[int, float | None]] = field(default_factory=list)


def _start(searcher, scheduler, table: Table, spec: SweepSpec, n: int, rng: random.Random) -> ReplayTrial | None:
    trial_id = f"trial_{n:05d}"
    params = searcher.suggest(trial_id)
    if params is None:
        return None
    config = nearest(spec.space, table.configs, params)
    seeds = sorted(table.curves[config])
    trial = ReplayTrial(trial_id, config, table.curves[config][rng.choice(seeds)])
    if scheduler is not None:
        scheduler.on_trial_add(None, trial)
    return trial


def _advance(trial: ReplayTrial, searcher, scheduler, max_t: int) -> tuple[bool, dict[str, Any]]:
    """One more epoch of ``trial`` reported; whether the trial ended, and its result."""
    from ray.tune.schedulers import TrialScheduler

    trial.epochs += 1
    value = trial.curve[trial.epochs - 1]
    result = {OBJECTIVE_KEY: value, EPOCHS_KEY: trial.epochs, "training_iteration": trial.epochs}
    if not math.isfinite(value):     # diverged: the trial fails, as in a sweep
        searcher.on_trial_complete(trial.trial_id, result, error=True)
        if scheduler is not None:
            scheduler.on_trial_error(None, trial)
        return True, result
    searcher.on_trial_result(trial.trial_id, result)
    decision = TrialScheduler.CONTINUE if scheduler is None else scheduler.on_trial_result(None, trial, result)
    if trial.epochs < max_t and decision != TrialScheduler.STOP:
        return False, result
    searcher.on_trial_complete(trial.trial_id, result)
    if scheduler is not None:
        scheduler.on_trial_complete(None, trial, result)
    return True, result


def replay(spec: SweepSpec, table: Table, name: str, search_seed: int, num_samples: int,
           budget: int | None = None, epochs: int | None = None) -> Replay:
    """Strategy ``name`` searching the table with ``search_seed``: what a sweep of ``spec``
    (``num_samples`` trials, ``max_concurrent`` at a time) would have spent and picked.
    ``epochs``: the trials' ``train.epochs`` (default: composed from ``spec``)."""
    from mpcl.launch.search import make_scheduler, study_searcher

    run_spec = strategy_spec(spec, STRATEGIES[name], search_seed)
    epochs = epochs or spec.epochs
    searcher = study_searcher(run_spec, epochs)
    scheduler = make_scheduler(run_spec, epochs)
    rng, sign = random.Random(search_seed), 1 if spec.mode == "max" else -1
    out, live, started, best = Replay(name, search_seed), [], 0, -math.inf
    while True:
        while len(live) < spec.max_concurrent and started < num_samples and (budget is None or out.spent < budget):
            trial = _start(searcher, scheduler, table, run_spec, started, rng)
            if trial is None:
                break
            live.append(trial)
            started += 1
        if not live:
            return out
        for trial in list(live):
            ended, result = _advance(trial, searcher, scheduler, table.max_t)
            out.spent += 1
            if not ended:
                continue
            live.remove(trial)
            value = result[OBJECTIVE_KEY]
            if trial.epochs == table.max_t and math.isfinite(value) and sign * value > best:
                best, out.picked = sign * value, trial.config
            out.trace.append((out.spent, None if out.picked is None else table.final(out.picked)))


def replay_all(spec: SweepSpec, table: Table, strategies: list[str], search_seeds: int, num_samples: int,
               budget: int | None = None) -> dict[str, list[Replay]]:
    epochs = spec.epochs
    return {name: [replay(spec, table, name, seed, num_samples, budget, epochs) for seed in range(search_seeds)]
            for name in strategies}
