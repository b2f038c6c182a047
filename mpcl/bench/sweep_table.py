"""The learning-curve table of ``bench sweep``: every configuration of a grid over a sweep
file's space trained on several seeds through the normal training path (the sweep's base,
overrides and the point, ``engine.fit`` with the local reporter of ``run.py train --no-ray``),
its objective recorded at every epoch.

The table is a JSON-lines file, one line per finished (configuration, seed)::

    {"params": {"method.temperature": 0.05, ...}, "seed": 0, "objective": [71.0, 70.6, ...]}

A build trains only the (configuration, seed) pairs the file lacks, appending each line and
fsyncing it as soon as its run ends: a killed build loses at most the run in progress, and a
half-written last line is ignored when read (and cut off before the next append)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from mpcl.files import write_text_atomic
from mpcl.launch.sweep_spec import SweepSpec

MAX_RANGES = 3   # a grid over more searched ranges grows past what a table can train
# Trial config keys that change no run's objective: left out of a table's settings
UNRECORDED = ("out", "train.seed", "train.progress", "train.log_every", "train.checkpoint_every", "train.resume",
              "scale.num_to_keep", "scale.max_failures", "data.path")


class TableError(ValueError):
    """A grid the space cannot have, or a table file that is not one (one line)."""


def _rounded(v: float) -> float:
    """Grid values to 6 significant digits: a finer grid meets the coarser one's values exactly."""
    return float(f"{v:.6g}")


def axis(key: str, d: dict[str, Any], n: int) -> list[Any]:
    """``n`` values over one searched key: log-spaced for loguniform, evenly spaced for uniform,
    distinct whole numbers for int; a choice's values as they are (``n`` is not used)."""
    if d["type"] == "choice":
        return list(d["values"])
    lo, hi = float(d["low"]), float(d["high"])
    if n == 1:
        return [_rounded(math.sqrt(lo * hi) if d["type"] == "loguniform" else (lo + hi) / 2)]
    fractions = [i / (n - 1) for i in range(n)]
    if d["type"] == "loguniform":
        return [_rounded(math.exp(math.log(lo) + f * (math.log(hi) - math.log(lo)))) for f in fractions]
    if d["type"] == "int":
        return sorted({int(round(lo + f * (hi - lo))) for f in fractions})
    return [_rounded(lo + f * (hi - lo)) for f in fractions]


def grid(spec: SweepSpec, counts: tuple[int, ...]) -> list[dict[str, Any]]:
    """Every configuration of the grid: ``counts[i]`` values for the i-th searched range (the
    last count repeats for the ranges after it), each choice's values as they are."""
    ranges = [k for k, d in spec.space.items() if d["type"] != "choice"]
    if len(ranges) > MAX_RANGES:
        raise TableError(f"space: {len(ranges)} searched ranges ({', '.join(ranges)}); a table's grid "
                         f"covers at most {MAX_RANGES}")
    if not counts or any(n < 1 for n in counts):
        raise TableError(f"--grid {' '.join(map(str, counts))}: every count must be >= 1")
    n_of = {k: counts[min(i, len(counts) - 1)] for i, k in enumerate(ranges)}
    axes = [axis(k, d, n_of.get(k, 0)) for k, d in spec.space.items()]
    return [dict(zip(spec.space, values)) for values in product(*axes)]


def horizon(spec: SweepSpec) -> int:
    """``max_t``: the epochs a complete trial trains (the scheduler's ``max_t``, at most ``train.epochs``)."""
    return min(int(spec.scheduler.get("max_t", spec.epochs)), spec.epochs)


def key(params: dict[str, Any], seed: int) -> str:
    return json.dumps([params, seed], sort_keys=True)


@dataclass(frozen=True)
class Run:
    """One finished (configuration, seed): its objective after each epoch."""
    params: dict[str, Any]
    seed: int
    objective: list[float]


def read_table(path: Path) -> list[Run]:
    """The table's runs; a last line without its newline (a killed write) is left out."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    complete = lines[:-1]   # after the last newline: nothing, or a torn line
    runs = []
    for i, line in enumerate(complete, 1):
        try:
            row = json.loads(line)
            runs.append(Run(dict(row["params"]), int(row["seed"]), [float(v) for v in row["objective"]]))
        except (ValueError, KeyError, TypeError):
            raise TableError(f"{path}:{i}: not a table line (params, seed, objective)") from None
    return runs


def _append(path: Path, run: Run) -> None:
    """Append ``run`` as one line and fsync it, cutting off a torn last line first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        f.seek(0)
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            f.truncate(end)
        f.write((json.dumps({"params": run.params, "seed": run.seed, "objective": run.objective}) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def train_run(spec: SweepSpec, params: dict[str, Any], seed: int, scratch: Path) -> list[float]:
    """The objective after each epoch of one trial's config (seed ``seed``), trained here,
    as ``run.py train --no-ray`` trains it, in the run directory ``scratch``. The epochs after
    a divergence (NaN/inf loss) are NaN: the trial fails there, as it would in a sweep."""
    from mpcl.engine.local import LocalReporter
    from mpcl.engine.loop import DivergedError, fit
    from mpcl.tracking import read_metrics

    cfg = spec.config({**params, "train.seed": seed, "train.progress": "false"}, out=str(scratch))
    reporter = LocalReporter(cfg, echo=False)
    try:
        fit(cfg, reporter)
    except DivergedError:
        pass
    finally:
        reporter.close()
    values = [r.get(spec.metric) for r in read_metrics(scratch)]
    values = [float(v) if isinstance(v, (int, float)) else math.nan for v in values]
    return values + [math.nan] * (cfg.train.epochs - len(values))


def settings_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.settings.json")


def table_settings(spec: SweepSpec) -> dict[str, Any]:
    """What every run of a table trains with besides its configuration and seed: the trial
    config, flattened, less the searched keys and those that change no objective."""
    from mpcl.config.schema import flatten, to_dict

    flat = flatten(to_dict(spec.config(spec.example_params(), out="table")))
    settings = {k: v for k, v in flat.items()
                if k not in spec.space and k not in UNRECORDED and not k.startswith("tracking.")}
    return json.loads(json.dumps(settings))   # as the file holds them (tuples as lists)


def check_settings(spec: SweepSpec, path: Path) -> None:
    """The table at ``path`` holds runs of this sweep's fixed settings: a table of other
    settings is refused in one line (its runs would answer another question); a table without
    a record of its settings gets this sweep's."""
    settings, file = table_settings(spec), settings_path(path)
    if not file.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(file, json.dumps(settings, indent=1, sort_keys=True) + "\n")
        return
    try:
        recorded = json.loads(file.read_text())
    except ValueError:
        raise TableError(f"{file}: not a table's settings (JSON); remove it to record this sweep's") from None
    changed = sorted(k for k in set(settings) | set(recorded) if settings.get(k) != recorded.get(k))
    if changed:
        k = changed[0]
        raise TableError(f"{path}: its runs trained with {k}={recorded.get(k)!r}, this sweep's with "
                         f"{k}={settings.get(k)!r} ({len(changed)} setting(s) differ, listed in {file.name}); "
                         f"--table PATH starts another table")


def build_table(spec: SweepSpec, configs: list[dict[str, Any]], seeds: int, path: Path,
                say: Callable[[str], None], train: Callable = train_run) -> list[Run]:
    """Train the (configuration, seed) pairs the table at ``path`` lacks, appending each when it
    ends; returns the table's runs of ``configs`` and seeds ``0..seeds-1``."""
    done = {key(r.params, r.seed): r for r in read_table(path)}
    path.parent.mkdir(parents=True, exist_ok=True)
    missing = [(p, s) for p in configs for s in range(seeds) if key(p, s) not in done]
    if missing:
        say(f"table {path}: {len(done)} run(s) there, {len(missing)} to train")
    for i, (params, seed) in enumerate(missing, 1):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="run-", dir=path.parent) as scratch:
            run = Run(params, seed, train(spec, params, seed, Path(scratch)))
        _append(path, run)
        done[key(params, seed)] = run
        say(f"  [{i}/{len(missing)}] {params} seed {seed}: {spec.metric} {run.objective[-1]:.4g} "
            f"({time.monotonic() - started:.0f} s)")
    return [done[key(p, s)] for p in configs for s in range(seeds)]


@dataclass(frozen=True)
class Table:
    """The runs grouped by configuration: ``curves[i]`` maps each seed of ``configs[i]`` to its
    objective after epochs 1..``max_t``."""
    configs: list[dict[str, Any]]
    curves: list[dict[int, list[float]]]
    max_t: int

    @classmethod
    def of(cls, runs: list[Run], max_t: int) -> Table:
        configs: list[dict[str, Any]] = []
        curves: list[dict[int, list[float]]] = []
        index: dict[str, int] = {}
        for r in runs:
            k = json.dumps(r.params, sort_keys=True)
            if k not in index:
                index[k] = len(configs)
                configs.append(r.params)
                curves.append({})
            if len(r.objective) < max_t:
                raise TableError(f"table: {r.params} seed {r.seed} has {len(r.objective)} epochs; max_t is {max_t}")
            curves[index[k]][r.seed] = r.objective[:max_t]
        return cls(configs, curves, max_t)

    def mean(self, config: int, epoch: int) -> float:
        """The objective of ``configs[config]`` after ``epoch`` epochs, averaged over its seeds
        (NaN when a seed failed by then)."""
        values = [curve[epoch - 1] for curve in self.curves[config].values()]
        return sum(values) / len(values)

    def final(self, config: int) -> float:
        """The configuration's true objective: its mean over seeds at ``max_t``."""
        return self.mean(config, self.max_t)
