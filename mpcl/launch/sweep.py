"""Running a sweep (``run.py sweep``): a Ray Tune ``Tuner`` over a function trainable that
starts one ``TorchTrainer`` per trial, searched by ``mpcl.launch.search``, then the table of
results and, when the sweep file asks, the confirmation stage (``mpcl.launch.confirm``).

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

With several objectives each is reported under its own key (``objective_0``, ...), every row
of ``results.json`` keeps them all and the summary names the Pareto front.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from mpcl.config import Config, flatten, to_dict
from mpcl.config.compose import load
from mpcl.files import write_text_atomic
from mpcl.launch import LaunchError
from mpcl.launch.confirm import run_confirm
from mpcl.launch.storage import Mirror, is_uri, join, kind
from mpcl.launch.sweep_spec import SweepSpec, load_sweep
from mpcl.launch.worker import EPOCHS_KEY, OBJECTIVE_KEY, failure_reason, objective_keys
from mpcl.tracking.sweep_results import (
    RESULTS_FILE,
    STUDY_FILE,
    mark_pareto,
    open_study,
    sort_rows,
    storage_url,
    write_results,
)


def make_trainable(spec: SweepSpec, sweep_dir: str | Path, base: Config):
    """A Tune function trainable that runs one ``TorchTrainer`` named after the trial id (so a
    restored trial resumes from its Ray Train checkpoints). ``base`` (the checked example trial)
    travels as a flat dict: the node a trial lands on needs the code and the data, not the
    sweep files. Each trial loads (and validates) its config once; the workers get it as is."""
    from mpcl.launch.console import verbose

    trials_dir = join(sweep_dir, "trials") if is_uri(sweep_dir) else str((Path(sweep_dir) / "trials").resolve())
    base_tree = flatten(to_dict(base))
    metric = [m for m, _ in spec.objectives] if spec.multi_objective else spec.metric
    pbt = spec.scheduler["type"] == "pbt"
    quiet = not verbose()   # as the driver was asked: a trial's process may not share its environment

    def trial(params: dict[str, Any]) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        from mpcl.engine.local import start_over
        from mpcl.launch.train import run_trainer

        trial_id = tune.get_context().get_trial_id()
        cfg = load(None, {**base_tree, **params, "out": f"{trials_dir}/{trial_id}"})
        if not cfg.train.resume:
            start_over(cfg.out)
        if pbt:   # its checkpoints reach Tune, for PBT's exploit
            from mpcl.launch.pbt import run_pbt_trial

            return run_pbt_trial(cfg, params, metric, quiet)
        run_trainer(cfg, objective=metric, callbacks=[TuneReportCallback()], quiet=quiet)

    return trial


def _spec_to_resume(path, sweep_dir: str | Path, files: Mirror, storage: str | None,
                    overrides: list[str] | None) -> SweepSpec:
    """The sweep as it was started (its recorded ``sweep.yaml``), with the study of a driver
    that ran elsewhere fetched when the sweep directory is a URI."""
    if overrides:
        raise LaunchError(f"--resume continues the sweep as it was started: drop {' '.join(overrides)}")
    if kind(join(sweep_dir, "tune")) != "dir":
        raise LaunchError(f"--resume: {sweep_dir} holds no sweep to resume (no tune/ directory)")
    files.pull("sweep.yaml")
    if files.remote and storage is None and not (files.local / STUDY_FILE).is_file():
        files.pull(STUDY_FILE)
    return load_sweep(files.local / "sweep.yaml", out=str(sweep_dir))


def _check_before_ray(path, spec: SweepSpec, sweep_dir: str | Path, files: Mirror) -> Config:
    """The sweep directory, the data and the batch, checked on an example trial's config;
    returns that config, its paths made absolute here (trials run elsewhere)."""
    from mpcl.launch.preflight import check_out, preflight

    if spec.scheduler["type"] == "pbt" and files.remote:
        raise LaunchError(f"{path}: scheduler: pbt moves trial directories on exploit, on a local or shared "
                          f"file system; out={sweep_dir} is a URI")
    if spec.confirm and files.remote:
        raise LaunchError(f"{path}: confirm: the confirmation stage writes a local sweep directory; "
                          f"out={sweep_dir} is a URI (drop confirm, or use a shared file system)")
    try:
        if not files.remote:
            check_out(str(sweep_dir))
        # GPUs: checked against the cluster's resources once joined (resources.* named)
        return preflight(spec.config(spec.example_params(), out=join(sweep_dir, "trials")),
                         local_gpus=False, check_out_dir=False)
    except LaunchError as e:
        raise LaunchError(f"{path}: {e}") from None


def _record_sweep_file(spec: SweepSpec, sweep_dir: str | Path, files: Mirror, example: Config) -> SweepSpec:
    """A new sweep writes ``sweep.yaml``: the file as run, with its base, out and data.path
    resolved here, so that ``--resume`` from anywhere continues the same sweep."""
    files.local.mkdir(parents=True, exist_ok=True)
    if files.remote:   # the driver's study of an older sweep at the same URI
        (files.local / STUDY_FILE).unlink(missing_ok=True)
    base = str(Path(spec.base).resolve()) if spec.base else None
    source = {**spec.source, "base": base, "out": str(sweep_dir),
              "overrides": {**(spec.source.get("overrides") or {}), "data.path": example.data.path}}
    write_text_atomic(files.local / "sweep.yaml", yaml.safe_dump(source, sort_keys=False))
    files.push("sweep.yaml")
    return load_sweep(files.local / "sweep.yaml", out=str(sweep_dir))


def _tuner(spec: SweepSpec, sweep_dir: str | Path, files: Mirror, example: Config, resume: bool):
    """A new ``Tuner``, or the interrupted one restored from ``tune/``."""
    from ray import tune

    from mpcl.launch.console import sweep_view, verbose
    from mpcl.launch.search import make_scheduler, make_searcher, population_searcher, tune_space

    # The trial function only waits on its TorchTrainer: it reserves no CPU (Ray refuses an
    # empty request, hence a token byte of memory); the trainer's workers take scale.*.
    trainable = tune.with_resources(make_trainable(spec, sweep_dir, example), {"cpu": 0, "memory": 1})
    epochs = example.train.epochs
    # Tune's own status tables with --verbose; otherwise mpcl's view of the trials
    shown = {"verbose": 1, "callbacks": []} if verbose() else {
        "verbose": 0, "callbacks": [sweep_view(spec, epochs, sweep_dir)]}
    if not verbose():   # Tune's newer output prints its experiment header at any verbosity
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    if resume:
        tuner = tune.Tuner.restore(str(join(sweep_dir, "tune")), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
        # restore() takes no run config: what is shown is this run's choice, not the first run's
        run_config = tuner._local_tuner._run_config
        run_config.verbose, run_config.callbacks = shown["verbose"], shown["callbacks"]
        return tuner
    pbt = spec.scheduler["type"] == "pbt"   # Ray runs PBT with no search algorithm but its own draws
    return tune.Tuner(
        trainable, param_space=tune_space(spec) if pbt else None,
        tune_config=tune.TuneConfig(
            search_alg=population_searcher(spec) if pbt else make_searcher(spec, files.local, epochs, spec.study),
            scheduler=make_scheduler(spec, epochs),
            num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent,
            reuse_actors=False),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir),
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                  # PBT's trials report checkpoints: a donor's must outlive its exploit
                                  # (PBT warns below 3)
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
                                  # Tune's state reaches a URI every 30 s (Ray's default: 300 s),
                                  # so a killed driver's --resume loses little
                                  sync_config=tune.SyncConfig(sync_period=30), **shown),
    )


def run_sweep(path: str | os.PathLike, address: str | None = None, resume: bool = False,
              out: str | None = None, storage: str | None = None, overrides: list[str] | None = None):
    """``run.py sweep``: writes ``results.json``; returns (rows best first, spec, sweep dir).
    ``storage``: the Optuna study's database URL (default: SQLite, ``optuna.db``). Paths are
    made absolute against the current directory here, once (trials run elsewhere), and the
    address, the data, the batch and the sweep directory are checked before Ray starts."""
    from mpcl.files import exclusive
    from mpcl.launch.cluster import check_address
    from mpcl.launch.preflight import absolute, check_storage

    spec = load_sweep(path, out=out, overrides=overrides)
    address = check_address(address)
    sweep_dir = str(spec.out).rstrip("/") if is_uri(spec.out) else Path(absolute(spec.out, Path.cwd()))
    files = Mirror(sweep_dir)           # sweep_dir itself, or the driver's folder for a URI
    if storage is not None:
        check_storage(storage)
    # a new sweep is checked before its directory exists; a resumed one reads its own files
    example = None if resume else _check_before_ray(path, spec, sweep_dir, files)
    with exclusive(files.local, "--out" if out else "out"):   # one driver per sweep directory
        return _run_locked(path, spec, sweep_dir, files, address, resume, storage, overrides, example)


def _run_locked(path, spec: SweepSpec, sweep_dir: str | Path, files: Mirror, address: str | None, resume: bool,
                storage: str | None, overrides: list[str] | None, example: Config | None):
    from mpcl.files import storage_failure
    from mpcl.launch.cluster import start_ray

    if resume:
        spec = _spec_to_resume(path, sweep_dir, files, storage, overrides)
        example = _check_before_ray(path, spec, sweep_dir, files)
    elif kind(join(sweep_dir, "tune")) != "missing":
        raise LaunchError(f"{sweep_dir} already holds a sweep: add --resume to continue it, or set another out")
    if not resume:
        spec = _record_sweep_file(spec, sweep_dir, files, example)
    spec.study = storage or storage_url(files.local)
    epochs = example.train.epochs
    where = start_ray(example, address, f"{path}: resources.", log_dir=files.local)
    print(f"ray: {where}; sweep {spec.name}: {spec.num_samples} trials, {spec.max_concurrent} at a time, "
          f"{epochs} epochs each; directory {sweep_dir}", file=sys.stderr)
    try:
        grid = _tuner(spec, sweep_dir, files, example, resume).fit()
        rows = collect_results(spec, sweep_dir, grid, epochs)
    except Exception as e:   # a full disk under the study (SQLite says so, not which file) or Tune
        failure = storage_failure(e, files.local / STUDY_FILE if storage is None else storage)
        if failure is None:
            raise
        raise failure from e
    if spec.confirm:
        run_confirm(spec, sweep_dir, rows, address)
    if storage is None:
        files.push(STUDY_FILE)          # a copy beside the results, for run.py report
    return rows, spec, sweep_dir


# -- the results ----------------------------------------------------------------------------

def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        line = line.strip()
        if "DivergedError" in line or "diverged at" in line:
            return line.split("DivergedError: ")[-1]
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
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
    study = open_study(study_url, study_name)
    if study is None:  # no study (yet): nothing was told
        return set()
    return {t.user_attrs["ray_trial_id"] for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and "ray_trial_id" in t.user_attrs}


def _add_objectives(row: dict[str, Any], spec: SweepSpec, metrics: dict[str, Any]) -> None:
    """A row of a sweep with several objectives: each one's last value, the first's as ``objective``."""
    values = [metrics.get(key) for key in objective_keys(len(spec.objectives))]
    row["objectives"] = {metric: v if isinstance(v, (int, float)) and math.isfinite(v) else None
                         for (metric, _), v in zip(spec.objectives, values)}
    row["objective"] = row["objectives"][spec.metric]


def collect_results(spec: SweepSpec, sweep_dir: Path, grid, epochs: int) -> list[dict[str, Any]]:
    rows = []
    # the grid's results come in the order of its trials (Tune's own Trial objects, private):
    # the trial id is known even for a trial that never reported
    trials = grid._experiment_analysis.trials
    files = Mirror(sweep_dir)
    pbt = spec.scheduler["type"] == "pbt"
    # no study under PBT, and PBT stops no trial early: one that ended before the last epoch was
    # interrupted (Tune marks the trials it stops on Ctrl-C as terminated)
    told = {t.trial_id for t, r in zip(trials, grid) if int((r.metrics or {}).get(EPOCHS_KEY, 0) or 0) >= epochs} \
        if pbt else _told_trials(spec.study or storage_url(files.local), spec.name)
    for trial, result in zip(trials, grid):
        m = dict(result.metrics or {})
        trial_id = trial.trial_id
        # under PBT the trial's knobs now (its last result may be the donor's, with the donor's knobs)
        params = dict((trial.config if pbt else result.config) or trial.config or {})
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
        if spec.multi_objective:
            _add_objectives(rows[-1], spec, m)
        if pbt:   # which trials its state came from, and the knobs of each epoch
            from mpcl.launch.pbt import read_lineage

            rows[-1].update(read_lineage(run_dir))
    rows = sort_rows(rows, spec.mode)
    summary = {"name": spec.name, "metric": spec.metric, "mode": spec.mode, "epochs": epochs,
               "storage": None if pbt else spec.study or storage_url(files.local), "study_name": spec.name,
               "scheduler": spec.scheduler["type"], "trials": rows}
    if spec.multi_objective:
        summary["objectives"] = [{"metric": metric, "mode": mode} for metric, mode in spec.objectives]
        mark_pareto(summary)
    write_results(files.local, summary)
    files.push(RESULTS_FILE)
    return rows
