"""The search of a sweep: Optuna's sampler over the space, through Ray's ``OptunaSearch``
with the study in a database (SQLite beside the results by default), and ASHA's early stopping.

The objective is measured every epoch and reported as ``objective`` with ``epochs_done``:
ASHA's rungs and Optuna's intermediate values compare the same measurement at the same epoch.
Trials that ASHA stops reach Optuna as PRUNED (their intermediate values kept), never as
COMPLETE with a partial value; a trial that diverges or crashes is FAIL. With several
objectives each has its own key (``objective_0``, ...), Optuna gets them all when the trial
ends (it keeps no intermediate values for several) and no scheduler stops trials.

Importing this module imports Ray Tune and Optuna: the sweep driver imports it when it runs.
"""

from __future__ import annotations

import math
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from mpcl.launch import LaunchError
from mpcl.launch.sweep_spec import SweepSpec
from mpcl.launch.worker import EPOCHS_KEY, OBJECTIVE_KEY, objective_keys
from mpcl.tracking.sweep_results import storage_url


def optuna_space(spec: SweepSpec) -> dict[str, Any]:
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
    if s["type"] == "nsga2":
        return PicklableNSGAIISampler(seed=seed, population_size=int(s.get("population_size", 50)))
    kwargs = {"seed": seed, "multivariate": bool(s.get("multivariate", True))}
    if "n_startup_trials" in s:
        kwargs["n_startup_trials"] = int(s["n_startup_trials"])
    with warnings.catch_warnings():  # multivariate is "experimental" in Optuna's words
        warnings.simplefilter("ignore")
        return optuna.samplers.TPESampler(**kwargs)


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, its thread lock made anew when unpickled: Tune pickles the searcher
    with its sampler (the state ``--resume`` restores), and a lock does not pickle."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


class StudySearch(OptunaSearch):
    """Ray's ``OptunaSearch`` tells Optuna COMPLETE with the last value for any trial that
    ends without error, ASHA-stopped ones included, and COMPLETE for an errored trial that
    had reported. Here: error -> FAIL, stopped before ``total_epochs`` -> PRUNED (Optuna keeps its
    intermediate values), finished -> COMPLETE with the final objective. Intermediate
    values are keyed by epochs done, not by Tune's iteration count (which restarts when a
    trial is restored). Several objectives (``metric`` a list): COMPLETE with every final
    value, FAIL when one is missing, no intermediate values."""

    def __init__(self, *, total_epochs: int, **kwargs):
        super().__init__(**kwargs)
        self.total_epochs = total_epochs

    def suggest(self, trial_id):
        params = super().suggest(trial_id)
        ot = self._ot_trials.get(trial_id)
        if ot is not None and "ray_trial_id" not in ot.user_attrs:
            ot.set_user_attr("ray_trial_id", trial_id)
        return params

    def on_trial_result(self, trial_id, result):
        ot = self._ot_trials.get(trial_id)
        if isinstance(self.metric, list):   # Optuna refuses intermediate values for several objectives
            return
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
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics]
        value = values if isinstance(self.metric, list) else values[0]
        done = int(result.get(EPOCHS_KEY, 0) or 0)
        if not error:  # the last epoch's value reaches the study as an intermediate too
            self.on_trial_result(trial_id, result)
        if error or any(v is None or not math.isfinite(v) for v in values):
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


def make_searcher(spec: SweepSpec, sweep_dir: Path, epochs: int, study: str | None = None) -> StudySearch:
    """The searcher of ``spec`` with its study in ``study`` (a database URL; default: SQLite in
    ``sweep_dir``); trials that stop before ``epochs`` are PRUNED."""
    return study_searcher(spec, epochs, optuna.storages.RDBStorage(study or storage_url(sweep_dir)))


def study_searcher(spec: SweepSpec, epochs: int, storage=None) -> StudySearch:
    """The searcher of ``spec`` with its study in ``storage`` (an Optuna storage; None: in memory,
    as ``bench sweep`` replays it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.multi_objective:
        metric, mode = objective_keys(len(spec.objectives)), [mode for _, mode in spec.objectives]
    else:
        metric, mode = OBJECTIVE_KEY, spec.mode
    return StudySearch(total_epochs=epochs, space=optuna_space(spec), metric=metric, mode=mode,
                       sampler=optuna_sampler(spec), study_name=spec.name, storage=storage,
                       points_to_evaluate=spec.points or None)


def tune_space(spec: SweepSpec) -> dict[str, Any]:
    """The space as Tune's distributions: PBT's initial population and its resampling."""
    from ray import tune

    out = {}
    for key, d in spec.space.items():
        t = d["type"]
        if t == "choice":
            out[key] = tune.choice(d["values"])
        elif t == "int":
            out[key] = tune.randint(int(d["low"]), int(d["high"]) + 1)
        else:
            out[key] = (tune.loguniform if t == "loguniform" else tune.uniform)(float(d["low"]), float(d["high"]))
    return out


def population_searcher(spec: SweepSpec):
    """Under PBT: Tune's random draws from the space (``points`` first), seeded by
    ``sampler.seed``. Ray runs PBT with no other search algorithm, so there is no Optuna study."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=spec.points or None, random_state=spec.sampler.get("seed"))


def within_space(spec: SweepSpec):
    """PBT's explore multiplies a value by 0.8 or 1.2: the result is clipped back into the space."""
    def clip(config: dict[str, Any]) -> dict[str, Any]:
        for key, d in spec.space.items():
            if d["type"] != "choice":
                config[key] = type(config[key])(min(max(config[key], d["low"]), d["high"]))
        return config

    return clip


def _population_based_training(total_epochs: int, **settings):
    """Ray's PBT, except at a trial's last epoch: an exploit there would only make the trial a
    copy of its donor under knobs it never trains with."""
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    class LastEpochKept(PopulationBasedTraining):
        def on_trial_result(self, tune_controller, trial, result):
            if int(result.get(EPOCHS_KEY, 0) or 0) >= total_epochs:
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    return LastEpochKept(**settings)


def make_scheduler(spec: SweepSpec, epochs: int):
    if spec.scheduler.get("type", "asha") == "none":
        return None
    if spec.scheduler["type"] == "pbt":
        s, space = spec.scheduler, tune_space(spec)
        # each exploit restarts the trial's TorchTrainer from a checkpoint: there is no actor to reuse
        warnings.filterwarnings("ignore", message="Consider boosting PBT performance")
        mutations = {k: spec.space[k]["values"] if spec.space[k]["type"] == "choice" else space[k] for k in space}
        return _population_based_training(
            epochs, time_attr=EPOCHS_KEY, metric=OBJECTIVE_KEY, mode=spec.mode,
            perturbation_interval=s["perturbation_interval"], quantile_fraction=s["quantile_fraction"],
            resample_probability=s["resample_probability"], synch=s["synch"], hyperparam_mutations=mutations,
            custom_explore_fn=within_space(spec))
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    return ASHAScheduler(time_attr=EPOCHS_KEY, metric=OBJECTIVE_KEY, mode=spec.mode,
                         max_t=int(s.get("max_t", epochs)), grace_period=int(s.get("grace_period", 1)),
                         reduction_factor=float(s.get("reduction_factor", 2)))
