"""A trial of a population-based sweep (``scheduler: {type: pbt}``): its checkpoints reach
Tune, PBT's exploit starts it from another trial's, and its lineage is kept in
``<trial run dir>/lineage.json``.

Each epoch's Ray Train report (and its checkpoint, ``state.pt``: the model, the optimizer,
the memory bank or queue, the random generators) goes through a queue from the
``TorchTrainer``'s controller to the trial, which reports it to Tune with the checkpoint
(Tune keeps a copy). When PBT's exploit gives this trial a donor's checkpoint, the trial's
own run so far moves aside (``<id>.old-<stamp>``, as ``train.resume=false`` does), the
donor's ``state.pt`` becomes ``checkpoints/last.pt`` with the donor's ``metrics.jsonl`` and
lineage up to that epoch, and training continues from the donor's epoch with this trial's new
knobs: the engine reads the optimizer's hyperparameters and the method's knobs from the config.

``lineage.json``: ``clones`` (``{"from": trial id, "epochs_done": n}``: this run's state
continues that trial's after n epochs; the donor's own clones before them) and ``schedule``
(one row per epoch trained, ``{"epoch": n, <knob>: value, ...}``: the knobs in effect then).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback

from mpcl.config import Config
from mpcl.files import write_text_atomic
from mpcl.launch.worker import EPOCHS_KEY, STATE_FILE

LINEAGE_FILE = "lineage.json"


def read_lineage(run_dir: str | Path) -> dict[str, list]:
    path = Path(run_dir) / LINEAGE_FILE
    if not path.is_file():
        return {"clones": [], "schedule": []}
    return json.loads(path.read_text())


def _write_lineage(run_dir: Path, lineage: dict[str, list]) -> None:
    write_text_atomic(run_dir / LINEAGE_FILE, json.dumps(lineage, indent=1))


class TuneCheckpointReport(UserCallback):
    """In the ``TorchTrainer``'s controller: rank 0's metrics and the checkpoint of each
    report, handed to the trial (``Ray Train`` has already stored the checkpoint)."""

    def __init__(self, reports):
        self.reports = reports

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        self.reports.put((dict(metrics[0]), checkpoint))


def start_from_donor(cfg: Config) -> str | None:
    """Before the trial's trainer starts: when Tune restores it from another trial's checkpoint
    (PBT's exploit), this run continues that trial's; returns the donor's id, else None."""
    from ray import tune

    from mpcl.engine import checkpoint as ckpt
    from mpcl.engine.local import start_over

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    out = Path(cfg.out)
    with checkpoint.as_directory() as d:
        state = ckpt.load(Path(d) / STATE_FILE)
    donor = Path(state["config"]["out"])
    if donor.name == out.name:   # its own checkpoint (a resumed sweep): Ray Train resumes it
        return None
    epochs = int(state["epoch"]) + 1
    start_over(out, why=f"pbt exploit (continues {donor.name} after {epochs} epoch(s))")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    ckpt.save_atomic(state, out / "checkpoints" / "last.pt")
    if (donor / "metrics.jsonl").is_file():   # the run record drops the lines after the checkpoint
        shutil.copyfile(donor / "metrics.jsonl", out / "metrics.jsonl")
    inherited = read_lineage(donor)
    _write_lineage(out, {
        "clones": [c for c in inherited["clones"] if c["epochs_done"] <= epochs]
        + [{"from": donor.name, "epochs_done": epochs}],
        "schedule": [row for row in inherited["schedule"] if row["epoch"] <= epochs]})
    return donor.name


def _record_epoch(run_dir: Path, lineage: dict[str, list], epochs_done: int, params: dict[str, Any]) -> None:
    """The knobs in effect in epoch ``epochs_done`` join ``lineage`` (and its file), unless
    recorded already: a restarted run first reports its checkpoint's epoch again, trained
    with the knobs of then."""
    if any(row["epoch"] == epochs_done for row in lineage["schedule"]):
        return
    lineage["schedule"] = sorted(lineage["schedule"] + [{"epoch": epochs_done, **params}], key=lambda r: r["epoch"])
    _write_lineage(run_dir, lineage)


def run_pbt_trial(cfg: Config, params: dict[str, Any], objective: str, quiet: bool) -> None:
    """The trial's ``TorchTrainer`` in a thread; its reports, checkpoints included, reach Tune
    from the trial's own thread (``tune.report`` works only there)."""
    from ray import tune
    from ray.util.queue import Queue

    from mpcl.launch.train import run_trainer

    start_from_donor(cfg)
    lineage = read_lineage(cfg.out)
    reports = Queue(1, actor_options={"num_cpus": 0})
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            run_trainer(cfg, objective=objective, callbacks=[TuneCheckpointReport(reports)], quiet=quiet)
        except BaseException as e:   # raised again in the trial's thread
            failure.append(e)
        finally:
            reports.put(None)

    trainer = threading.Thread(target=fit, name="pbt-trainer", daemon=True)
    trainer.start()
    while (item := reports.get()) is not None:
        metrics, checkpoint = item
        if EPOCHS_KEY in metrics:
            _record_epoch(Path(cfg.out), lineage, int(metrics[EPOCHS_KEY]), params)
        tune.report(metrics, checkpoint=checkpoint)
    trainer.join()
    if failure:
        raise failure[0]
