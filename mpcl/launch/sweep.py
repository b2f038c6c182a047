"""Sweeps: Ray Tune + Optuna over any config key, one ``TorchTrainer`` per trial.

A sweep file (``sweeps/*.yaml``)::

    name: fmnist_demo
    base: configs/fmnist_simclr_attn.yaml      # preset the trials start from
    overrides: {model.backbone: small_cnn}      # fixed for every trial
    space:                                      # searched: uniform | loguniform | int | choice
      method.temperature: {type: loguniform, low: 0.05, high: 1.0}
      method.attention_weight: {type: uniform, low: 0.0, high: 1.0}
    points: [{method.temperature: 0.5, method.attention_weight: 1.0}]   # optional: tried first
    objective: {metric: val/knn_top1, mode: max}
    num_samples: 8
    max_concurrent: 2
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: none}
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}  # per trial (scale.*)
    sampler: {type: tpe, seed: 0, multivariate: true}               # tpe | random | cmaes
    out: runs/sweeps/fmnist_demo
    confirm: {top_k: 3, seeds: 3}   # optional: the top 3 and points[0] again on 3 fresh seeds

Layout of the sweep directory ``out``: ``sweep.yaml`` (the file as run), ``optuna.db`` (the
study: ``optuna-dashboard sqlite:///<out>/optuna.db``), ``tune/`` (Tune's experiment state,
what ``--resume`` restores), ``trials/<trial_id>/`` (each trial's run directory: config.yaml,
metrics.jsonl, Ray Train checkpoints), ``results.json`` (the table).

``out`` may be a URI (``s3://...``, ``gs://...``) when the nodes share no file system: Tune and
the trials write there; ``sweep.yaml`` and ``results.json`` are written on the driver
(``mpcl.launch.storage.local_dir``) and copied there, and so is the SQLite study, which
lives on the driver (``--resume`` on another machine fetches it) unless ``--storage`` names a
database (``postgresql://...``).

The objective is measured every epoch (``train.eval_every=1``) and reported as ``objective``
with ``epochs_done``: ASHA's rungs and Optuna's intermediate values compare the same
measurement at the same epoch. Trials that ASHA stops reach Optuna as PRUNED (their
intermediate values kept), never as COMPLETE with a partial value; a trial that diverges or
crashes is FAIL in the study and ``failed`` with its reason in the results. A sweep stopped
by Ctrl-C leaves its running trials RUNNING in the study and ``interrupted`` in the results;
``--resume`` continues each from its last checkpoint, whose epoch is reported again so the
study has every intermediate value even if the interruption came before Tune received it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mpcl.config import ConfigError, read_yaml_mapping
from mpcl.configure import load
from mpcl.launch import LaunchError
from mpcl.launch.confirm import parse_confirm, run_confirm
from mpcl.launch.storage import Mirror, is_uri, join, kind

OBJECTIVE_KEY = "objective"
EPOCHS_KEY = "epochs_done"
SPACE_TYPES = ("uniform", "loguniform", "int", "choice")
SAMPLERS = ("tpe", "random", "cmaes")
SWEEP_KEYS = {"name", "base", "overrides", "space", "points", "objective", "num_samples", "max_concurrent",
              "scheduler", "resources", "sampler", "out", "description", "confirm"}


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

    # -- derived ---------------------------------------------------------------------------
    def trial_overrides(self, params: dict[str, Any], out: str | None = None) -> dict[str, Any]:
        o = dict(self.overrides)
        for k, v in self.resources.items():
            o[f"scale.{k}"] = v
        if self.metric.startswith("val/"):
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
    _check(path, "scheduler.type", scheduler.get("type"), scheduler.get("type") in ("asha", "none"),
           "allowed: asha, none")
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


def _check_sampler(path, sampler: dict) -> None:
    _check(path, "sampler.type", sampler["type"], sampler["type"] in SAMPLERS, f"allowed: {', '.join(SAMPLERS)}")
    seed = sampler.get("seed")
    _check(path, "sampler.seed", seed, seed is None or _is_int(seed), "must be a whole number or null")
    _check(path, "sampler.multivariate", sampler["multivariate"], isinstance(sampler["multivariate"], bool),
           "must be true or false")
    if "n_startup_trials" in sampler:
        n = sampler["n_startup_trials"]
        _check(path, "sampler.n_startup_trials", n, _is_int(n) and n >= 0, "must be a whole number >= 0")


COMMAND_LINE_KEYS = ("num_samples", "max_concurrent", "out")


def apply_overrides(path, tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``run.py sweep FILE key=value ...``: ``num_samples`` / ``max_concurrent`` / ``out``
    replace the file's; ``section.key=value`` joins its ``overrides`` (every trial)."""
    from mpcl.config import parse_override

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


def load_sweep(path: str | os.PathLike, out: str | None = None, overrides: list[str] | None = None) -> SweepSpec:
    """Read and validate a sweep file: every error is one line naming the key, before Ray starts."""
    from mpcl.engine.loop import reported_metrics

    path = Path(path)
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
    base = tree.get("base")
    if base is None:
        raise _fail(path, "base: missing (the config preset every trial starts from, e.g. "
                          "base: configs/fmnist_simclr_attn.yaml)")
    _check(path, "base", base, isinstance(base, str) and base != "", "expected the path of a config preset")
    base_path = Path(base)
    if not base_path.is_file() and (path.parent.parent / base).is_file():
        base_path = path.parent.parent / base  # relative to the repository root
    if not base_path.is_file():
        raise _fail(path, f"base={base!r}: no such file")
    base = str(base_path)
    overrides = _mapping(path, tree, "overrides")
    resources = _mapping(path, tree, "resources")
    space = tree.get("space") or {}
    _check_space(path, space)
    points = tree.get("points") or []
    _check(path, "points", points, isinstance(points, list), "expected a list of mappings")
    for i, point in enumerate(points):
        _check_point(path, i, point, space)
    objective = _mapping(path, tree, "objective", {"metric", "mode"})
    metric, mode = objective.get("metric", "val/knn_top1"), objective.get("mode", "max")
    _check(path, "objective.mode", mode, mode in ("max", "min"), "allowed: max, min")
    _check(path, "objective.metric", metric, isinstance(metric, str), "expected a metric name")
    for key in ("num_samples", "max_concurrent"):
        if key in tree:
            _check(path, key, tree[key], _is_int(tree[key]) and tree[key] >= 1, "must be a whole number >= 1")
    scheduler = {"type": "asha", **_mapping(path, tree, "scheduler",
                                              {"type", "grace_period", "reduction_factor", "max_t"})}
    _check_scheduler(path, scheduler)
    sampler = {"type": "tpe", "seed": 0, "multivariate": True,
               **_mapping(path, tree, "sampler", {"type", "seed", "multivariate", "n_startup_trials"})}
    _check_sampler(path, sampler)
    spec = SweepSpec(
        name=tree.get("name") or path.stem, base=base, overrides=dict(overrides), space=space,
        points=points, metric=metric, mode=mode, num_samples=tree.get("num_samples", 8),
        max_concurrent=tree.get("max_concurrent", 1), scheduler=scheduler, resources=dict(resources),
        sampler=sampler, out=out or tree.get("out") or f"runs/sweeps/{path.stem}", source=tree,
        confirm=parse_confirm(path, tree.get("confirm"), bool(points)),
    )
    try:  # every key and the extremes of the space make a valid config
        cfg = spec.config(spec.example_params(), out="/tmp/x")
        for key, d in space.items():
            for v in (d["values"] if d["type"] == "choice" else [d["low"], d["high"]]):
                spec.config({**spec.example_params(), key: int(v) if d["type"] == "int" else v}, out="/tmp/x")
        for point in points:
            spec.config({**spec.example_params(), **point}, out="/tmp/x")
    except ConfigError as e:
        raise _fail(path, str(e)) from None
    reported = reported_metrics(cfg)
    if metric not in reported:
        raise _fail(path, f"objective.metric={metric!r}: method {cfg.method.name} does not report it; "
                          f"it reports {', '.join(reported)}")
    return spec


# -- Optuna ---------------------------------------------------------------------------------

def optuna_space(spec: SweepSpec) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key, d in spec.space.items():
        t = d["type"]
        if t == "choice":
            out[key] = CategoricalDistribution(d["values"])
        elif t == "int":
            out[key] = IntDistribution(int(d["low"]), int(d["high"]), log=bool(d.get("log", False)))
        else:
            out[key] = FloatDistribution(float(d["low"]), float(d["high"]), log=t == "loguniform")
    return out


def optuna_sampler(spec: SweepSpec):
    import optuna

    s = spec.sampler
    seed = s.get("seed")
    if s["type"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s["type"] == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise LaunchError("sampler.type=cmaes needs the 'cmaes' package (pip install cmaes)") from None
        return optuna.samplers.CmaEsSampler(seed=seed)
    kwargs = {"seed": seed, "multivariate": bool(s.get("multivariate", True))}
    if "n_startup_trials" in s:
        kwargs["n_startup_trials"] = int(s["n_startup_trials"])
    import warnings

    with warnings.catch_warnings():  # multivariate is "experimental" in Optuna's words
        warnings.simplefilter("ignore")
        return optuna.samplers.TPESampler(**kwargs)


def storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"


def make_searcher(spec: SweepSpec, sweep_dir: Path, epochs: int, study: str | None = None):
    """``OptunaSearch`` (Ray's) with the study in SQLite and the trial states fixed."""
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """Ray's ``OptunaSearch`` tells Optuna COMPLETE with the last value for any trial that
        ends without error, ASHA-stopped ones included, and COMPLETE for an errored trial that
        had reported. Here: error -> FAIL, stopped before ``epochs`` -> PRUNED (Optuna keeps its
        intermediate values), finished -> COMPLETE with the final objective. Intermediate
        values are keyed by epochs done, not by Tune's iteration count (which restarts when a
        trial is restored)."""

        total_epochs = epochs

        def suggest(self, trial_id):
            params = super().suggest(trial_id)
            ot = self._ot_trials.get(trial_id)
            if ot is not None and "ray_trial_id" not in ot.user_attrs:
                ot.set_user_attr("ray_trial_id", trial_id)
            return params

        def on_trial_result(self, trial_id, result):
            ot = self._ot_trials.get(trial_id)
            if ot is None or trial_id in self._completed_trials or self.metric not in result:
                return
            value, step = result[self.metric], int(result.get(EPOCHS_KEY, 0))
            if value is not None and math.isfinite(value) and step not in ot.storage.get_trial(
                    ot._trial_id).intermediate_values:
                ot.report(float(value), step)

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot = self._ot_trials[trial_id]
            result = result or {}
            value = result.get(self.metric)
            done = int(result.get(EPOCHS_KEY, 0) or 0)
            if not error:  # the last epoch's value reaches the study as an intermediate too
                self.on_trial_result(trial_id, result)
            if error or value is None or not math.isfinite(value):
                state, value = TrialState.FAIL, None
            elif done < self.total_epochs:
                state, value = TrialState.PRUNED, None
            else:
                state = TrialState.COMPLETE
            try:
                self._ot_study.tell(ot, value, state=state)
            except Exception as e:  # already finished in the study (a resumed sweep)
                print(f"optuna: trial {trial_id}: {e}", file=sys.stderr)
            self._completed_trials.add(trial_id)

        def restore(self, checkpoint_path):
            super().restore(checkpoint_path)
            # Trials the study holds as RUNNING that the restored searcher does not know were
            # asked after Tune's last save of the searcher: they will never report.
            known = {ot.number for ot in self._ot_trials.values()}
            for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t.number not in known:
                    self._ot_study._storage.set_trial_user_attr(t._trial_id, "reason", "interrupted before Tune saved it")
                    self._ot_study.tell(t.number, state=TrialState.FAIL)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(study or storage_url(sweep_dir))
    searcher = StudySearch(space=optuna_space(spec), metric=OBJECTIVE_KEY, mode=spec.mode,
                           sampler=optuna_sampler(spec), study_name=spec.name, storage=storage,
                           points_to_evaluate=spec.points or None)
    return searcher


def make_scheduler(spec: SweepSpec, epochs: int):
    if spec.scheduler.get("type", "asha") == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    return ASHAScheduler(time_attr=EPOCHS_KEY, metric=OBJECTIVE_KEY, mode=spec.mode,
                         max_t=int(s.get("max_t", epochs)), grace_period=int(s.get("grace_period", 1)),
                         reduction_factor=float(s.get("reduction_factor", 2)))


# -- the trainable --------------------------------------------------------------------------

def make_trainable(spec: SweepSpec, sweep_dir: Path):
    """A Tune function trainable that runs one ``TorchTrainer`` named after the trial id (so a
    restored trial resumes from its Ray Train checkpoints). The base config travels as a flat
    dict: the node a trial lands on needs the code and the data, not the sweep files."""
    from mpcl.config import flatten, to_dict

    trials_dir = join(sweep_dir, "trials") if is_uri(sweep_dir) else str((sweep_dir / "trials").resolve())
    base = flatten(to_dict(spec.config(spec.example_params(), out=trials_dir)))
    metric = spec.metric

    def trial(params: dict[str, Any]) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        from mpcl.engine.local import start_over
        from mpcl.launch.train import run_trainer

        trial_id = tune.get_context().get_trial_id()
        cfg = load(None, {**base, **params, "out": f"{trials_dir}/{trial_id}"})
        if not cfg.train.resume:
            start_over(cfg.out)
        run_trainer(cfg, objective=metric, callbacks=[TuneReportCallback()])

    return trial


# -- the driver -----------------------------------------------------------------------------

def run_sweep(path: str | os.PathLike, address: str | None = None, resume: bool = False,
              out: str | None = None, storage: str | None = None, overrides: list[str] | None = None):
    """``run.py sweep``: writes ``results.json``; returns (rows best first, spec, sweep dir).
    ``storage``: the Optuna study's database URL (default: SQLite, ``optuna.db``). Paths are
    made absolute against the current directory here, once (trials run elsewhere), and the
    data, the batch and the sweep directory are checked before Ray starts."""
    from ray import tune

    from mpcl.launch.preflight import absolute, check_out, preflight
    from mpcl.launch.train import check_address, check_cluster_fits, init_ray

    spec = load_sweep(path, out=out, overrides=overrides)
    address = check_address(address)
    sweep_dir = str(spec.out).rstrip("/") if is_uri(spec.out) else Path(absolute(spec.out, Path.cwd()))
    files = Mirror(sweep_dir)           # sweep_dir itself, or the driver's folder for a URI
    tune_dir = join(sweep_dir, "tune")
    if resume:
        if overrides:
            raise LaunchError(f"--resume continues the sweep as it was started: drop {' '.join(overrides)}")
        if kind(tune_dir) != "dir":
            raise LaunchError(f"--resume: {sweep_dir} holds no sweep to resume (no tune/ directory)")
        files.pull("sweep.yaml")
        if files.remote and storage is None and not (files.local / "optuna.db").is_file():
            files.pull("optuna.db")     # the study of a driver that ran elsewhere
        spec = load_sweep(files.local / "sweep.yaml", out=str(sweep_dir))  # the sweep as it was started
    elif kind(tune_dir) != "missing":
        raise LaunchError(f"{sweep_dir} already holds a sweep: add --resume to continue it, or set another out")
    if spec.confirm and files.remote:
        raise _fail(path, f"confirm: the confirmation stage writes a local sweep directory; out={sweep_dir} "
                          "is a URI (drop confirm, or use a shared file system)")
    try:
        if not files.remote:
            check_out(str(sweep_dir))
        # GPUs: checked against the cluster's resources once joined (resources.* named)
        example = preflight(spec.config(spec.example_params(), out=join(sweep_dir, "trials")),
                            local_gpus=False, check_out_dir=False)
    except LaunchError as e:
        raise _fail(path, str(e)) from None
    if not resume:
        files.local.mkdir(parents=True, exist_ok=True)
        if files.remote:   # the driver's study of an older sweep at the same URI
            (files.local / "optuna.db").unlink(missing_ok=True)
        base = str(Path(spec.base).resolve()) if spec.base else None
        source = {**spec.source, "base": base, "out": str(sweep_dir),  # data.path as resolved here
                  "overrides": {**(spec.source.get("overrides") or {}), "data.path": example.data.path}}
        (files.local / "sweep.yaml").write_text(yaml.safe_dump(source, sort_keys=False))
        files.push("sweep.yaml")
        spec = load_sweep(files.local / "sweep.yaml", out=str(sweep_dir))
    spec.study = storage or storage_url(files.local)
    epochs = spec.epochs
    where = init_ray(address)
    check_cluster_fits(example, f"{path}: resources.", can_grow=address is not None)
    print(f"ray: {where}; sweep {spec.name}: {spec.num_samples} trials, {spec.max_concurrent} at a time, "
          f"{epochs} epochs each; directory {sweep_dir}", file=sys.stderr)
    # The trial function only waits on its TorchTrainer: it reserves no CPU (Ray refuses an
    # empty request, hence a token byte of memory); the trainer's workers take scale.*.
    trainable = tune.with_resources(make_trainable(spec, sweep_dir), {"cpu": 0, "memory": 1})
    if resume:
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(spec, files.local, epochs, spec.study),
                scheduler=make_scheduler(spec, epochs),
                num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent,
                reuse_actors=False),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir),
                                      failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                      # Tune's state reaches a URI every 30 s (Ray's default: 300 s),
                                      # so a killed driver's --resume loses little
                                      sync_config=tune.SyncConfig(sync_period=30),
                                      verbose=int(os.environ.get("MPCL_TUNE_VERBOSE", "1"))),
        )
    grid = tuner.fit()
    rows = collect_results(spec, sweep_dir, grid, epochs)
    if spec.confirm:
        run_confirm(spec, sweep_dir, rows, address)
    if storage is None:
        files.push("optuna.db")          # a copy beside the results, for run.py report
    return rows, spec, sweep_dir


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        line = line.strip()
        if "DivergedError" in line or "diverged at" in line:
            return line.split("DivergedError: ")[-1]
    lines = [l.strip() for l in str(text).splitlines() if l.strip()]
    return lines[-1] if lines else ""


def _error_reason(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = f"{type(error).__name__}: {error}"
    cause = error
    while getattr(cause, "__cause__", None) is not None:
        cause = cause.__cause__
        text += f"\n{type(cause).__name__}: {cause}"
    return _first_line(text)[:300]


def _told_trials(study_url: str, study_name: str) -> set[str]:
    """Ray trial ids whose end the study was told (COMPLETE, PRUNED or FAIL). Tune tells the
    searcher when it stops a trial (finished, ASHA, error), never when the whole sweep is
    interrupted: such a trial stays RUNNING in the study and ``--resume`` continues it."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=study_url)
    except Exception:  # no study (yet): nothing was told
        return set()
    return {t.user_attrs["ray_trial_id"] for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and "ray_trial_id" in t.user_attrs}


def collect_results(spec: SweepSpec, sweep_dir: Path, grid, epochs: int) -> list[dict[str, Any]]:
    from mpcl.launch.train import failure_reason

    rows = []
    # the grid's results come in the order of its trials (Tune's own Trial objects, private):
    # the trial id is known even for a trial that never reported
    trials = grid._experiment_analysis.trials
    files = Mirror(sweep_dir)
    told = _told_trials(spec.study or storage_url(files.local), spec.name)
    for trial, result in zip(trials, grid):
        m = dict(result.metrics or {})
        trial_id = trial.trial_id
        params = dict(result.config or trial.config or {})
        done = int(m.get(EPOCHS_KEY, 0) or 0)
        run_dir = join(sweep_dir, "trials", str(trial_id))
        reason = ""
        if result.error is not None:
            state = "failed"
            reason = failure_reason(run_dir) or _error_reason(result.error)
        elif trial.status != "TERMINATED" or trial_id not in told:
            state = "interrupted"
            reason = f"interrupted after {done} of {epochs} epochs (run.py sweep --resume continues it)"
        elif done < epochs:
            state = "pruned"
            reason = f"stopped by ASHA after {done} of {epochs} epochs"
        else:
            state = "complete"
        value = m.get(OBJECTIVE_KEY)
        rows.append({"trial_id": trial_id, "state": state, "reason": reason, "params": params,
                     "objective": value if isinstance(value, (int, float)) and math.isfinite(value) else None,
                     "epochs_done": done, "run_dir": str(run_dir)})
    rows = sort_rows(rows, spec.mode)
    summary = {"name": spec.name, "metric": spec.metric, "mode": spec.mode, "epochs": epochs,
               "storage": spec.study or storage_url(files.local), "study_name": spec.name, "trials": rows}
    tmp = files.local / ".results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, files.local / "results.json")
    files.push("results.json")
    return rows


STATE_ORDER = {"complete": 0, "pruned": 1, "interrupted": 2, "failed": 3}


def sort_rows(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    sign = -1 if mode == "max" else 1
    return sorted(rows, key=lambda r: (STATE_ORDER.get(r["state"], 4),
                                       sign * r["objective"] if r["objective"] is not None else math.inf,
                                       str(r["trial_id"])))


def format_table(rows: list[dict[str, Any]], metric: str) -> str:
    keys = sorted({k for r in rows for k in r["params"]})
    head = ["trial", "state", metric, "epochs", *keys, "reason"]
    body = []
    for r in rows:
        obj = "" if r["objective"] is None else f"{r['objective']:.4g}"
        vals = [f"{r['params'].get(k):.4g}" if isinstance(r["params"].get(k), float) else str(r["params"].get(k, ""))
                for k in keys]
        body.append([str(r["trial_id"]), r["state"], obj, str(r["epochs_done"]), *vals, r["reason"][:60]])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(b) for b in body)])
