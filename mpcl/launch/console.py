"""What a run or a sweep shows on the terminal, and where Ray's own output goes instead.

By default Ray's logs go to files: the driver's (Ray, Ray Tune) to ``DIR/logs/ray.log`` of
the run or sweep directory, each Ray Train worker's output to ``RUN/logs/worker-<rank>.log``
(:func:`mpcl.launch.worker.worker_output`), and nothing of the workers streams to the driver. What is shown:

- a sweep: :class:`SweepView`, a Ray Tune callback. On a terminal, one table redrawn in place
  (a row per trial: state, epochs, objective, knobs; the best trial; the counts; elapsed and
  left); otherwise one plain line per trial event (started, epoch, pruned, complete, failed);
- ``run.py train`` through Ray: :class:`RunView`, the epoch lines ``--no-ray`` prints (from the
  run's ``metrics.jsonl``) and, on a terminal, a bar of the epoch's steps (from rank 0's
  ``logs/progress.json``).

``--verbose`` (``MPCL_VERBOSE=1``) brings Ray's output back to the terminal as Ray prints it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mpcl.launch.worker import EPOCHS_KEY, LOG_DIR, PROGRESS_FILE, failure_reason, objective_keys
from mpcl.tracking.sweep_results import pareto_front

VERBOSE_ENV = "MPCL_VERBOSE"


def verbose() -> bool:
    """Whether Ray's own output goes to the terminal (``--verbose``)."""
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def ray_log_file(directory: str | os.PathLike) -> Path:
    return Path(directory) / LOG_DIR / "ray.log"


@contextmanager
def ray_logs_to(log_file: Path | None):
    """Around ``ray.init``: the driver's Ray loggers (``ray``, ``ray.tune``, ``ray.train``, ...)
    write to ``log_file`` (nowhere when None) instead of the terminal, from the first line
    ``ray.init`` logs on. (``ray.init(configure_logging=False)`` empties the ``ray`` logger's
    handlers, so the file's handler sits on the root while it runs and moves to ``ray`` after.)"""
    if log_file is None:
        handler: logging.Handler = logging.NullHandler()
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger, root = logging.getLogger("ray"), logging.getLogger()
    root.addHandler(handler)
    ray_logger.propagate = True
    try:
        yield
    finally:
        root.removeHandler(handler)
        ray_logger.handlers[:] = [handler]
        ray_logger.propagate = False


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class RunView:
    """``run.py train`` through Ray: while the run trains, a thread prints each new epoch of
    ``metrics.jsonl`` as ``--no-ray`` does and, on a terminal, draws the epoch's steps. A run
    directory that is a URI is read there, every 5 s, without the steps (rank 0 writes them on
    its own node)."""

    def __init__(self, run_dir: str | os.PathLike, epochs: int, stream=None, interval: float | None = None):
        from mpcl.launch.storage import is_uri

        self.remote = is_uri(run_dir)
        self.run_dir = str(run_dir) if self.remote else Path(run_dir)
        self.epochs = epochs
        self.stream = stream or sys.stdout
        self.interval = interval or (5.0 if self.remote else 0.5)
        self.shown: set[str] = set()
        self.stop = threading.Event()
        self.bar = None
        self.thread = threading.Thread(target=self._loop, name="mpcl-run-view", daemon=True)

    def __enter__(self) -> RunView:
        # a resumed run: the epochs already logged are known; one it trains again (its line was
        # written, its checkpoint was not) comes back with other numbers and is printed
        self.shown = {json.dumps(row, sort_keys=True) for row in self._rows()}
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._poll(final=True)
        if self.bar is not None:
            self.bar.close()

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self._poll()

    def _rows(self) -> list[dict[str, Any]]:
        from mpcl.launch.storage import join, read_text
        from mpcl.tracking import parse_metrics, read_metrics

        if not self.remote:
            return read_metrics(self.run_dir)
        try:
            return parse_metrics(read_text(join(self.run_dir, "metrics.jsonl")) or "")
        except OSError:   # the store did not answer this time: the next poll asks again
            return []

    def _poll(self, final: bool = False) -> None:
        from mpcl.tracking import summary_line

        for row in self._rows():
            key = json.dumps(row, sort_keys=True)
            if key not in self.shown:
                self.shown.add(key)
                self._say(summary_line(row))
        if self.stream.isatty() and not final and not self.remote:
            self._draw_bar()

    def _say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _draw_bar(self) -> None:
        from tqdm import tqdm

        try:
            p = json.loads((self.run_dir / LOG_DIR / PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            return
        if self.bar is None or self.bar.desc != f"epoch {p['epoch']}":
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=p["steps"], desc=f"epoch {p['epoch']}", file=self.stream, leave=False,
                            dynamic_ncols=True)
        self.bar.n = min(p["step"], p["steps"])
        self.bar.refresh()


class TrialRow:
    """What the view knows of one trial."""

    def __init__(self, trial_id: str, params: dict[str, Any]):
        self.trial_id = trial_id
        self.params = params
        self.state = "running"
        self.epochs = 0
        self.objective: float | None = None   # the first objective's last value
        self.values: dict[str, float] = {}     # every objective's last value
        self.reason = ""
        self.started = time.monotonic()


def tune_callback_base():
    """Ray Tune's ``Callback`` (imported when a sweep runs: importing Ray Tune takes seconds)."""
    from ray.tune import Callback

    return Callback


class SweepView:
    """The sweep on the terminal (see the module's docstring). Built by :func:`sweep_view`,
    which makes it a Ray Tune ``Callback``; the methods are Tune's hooks."""

    def __init__(self, spec, epochs: int, sweep_dir: str | os.PathLike, stream=None, live: bool | None = None):
        self.metric, self.mode = spec.metric, spec.mode
        self.objectives = list(spec.objectives)
        self.knobs = list(spec.space)
        self.total = spec.num_samples
        self.max_t = epochs
        self.trials_dir = Path(str(sweep_dir)) / "trials"
        self.stream = stream or sys.stdout
        self.live_view = self.stream.isatty() if live is None else live
        self.rows: dict[str, TrialRow] = {}
        self.t0 = time.monotonic()
        self.live = None

    def __getstate__(self) -> dict[str, Any]:
        """Tune may pickle its callbacks with the experiment: without the terminal."""
        return {k: v for k, v in self.__dict__.items() if k not in ("live", "stream")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, live=None, stream=sys.stdout)

    # -- Tune's hooks --------------------------------------------------------------------------
    def setup(self, **info) -> None:
        if self.live_view:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(get_renderable=self.table, console=Console(file=self.stream), refresh_per_second=2,
                             transient=False)
            self.live.start()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        row = self.rows.setdefault(trial.trial_id, TrialRow(trial.trial_id, dict(trial.config or {})))
        row.state = "running"
        row.params = dict(trial.config or {})   # PBT's exploit restarts a trial with new knobs
        self._say(f"trial {row.trial_id} started: " + " ".join(f"{k}={_value(v)}" for k, v in row.params.items()))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self.rows.setdefault(trial.trial_id, TrialRow(trial.trial_id, dict(trial.config or {})))
        epochs = int(result.get(EPOCHS_KEY, row.epochs) or 0)
        for (metric, _), key in zip(self.objectives, objective_keys(len(self.objectives))):
            value = result.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                row.values[metric] = float(value)
        row.objective = row.values.get(self.metric)
        if epochs > row.epochs:
            row.epochs = epochs
            shown = self._shown(row)
            self._say(f"trial {row.trial_id} epoch {epochs}/{self.max_t}{shown}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row = self.rows.setdefault(trial.trial_id, TrialRow(trial.trial_id, dict(trial.config or {})))
        shown = self._shown(row)
        if row.epochs < self.max_t:
            row.state = "pruned"
            self._say(f"trial {row.trial_id} pruned after {row.epochs}/{self.max_t} epochs{shown}")
        else:
            row.state = "complete"
            best = " (best so far)" if self.best() is row else ""
            self._say(f"trial {row.trial_id} complete{shown}{best}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        row = self.rows.setdefault(trial.trial_id, TrialRow(trial.trial_id, dict(trial.config or {})))
        row.state = "failed"
        run_dir = self.trials_dir / trial.trial_id
        row.reason = failure_reason(run_dir) or _tune_error(trial)
        logs = [p for p in sorted((run_dir / LOG_DIR).glob("worker-*.log")) if p.stat().st_size]
        where = f" (log: {logs[0]})" if logs else ""   # a traceback, or what the workers printed
        self._say(f"trial {row.trial_id} failed: {row.reason}{where}", always=True)

    def on_experiment_end(self, trials, **info) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # -- the view ------------------------------------------------------------------------------
    def _say(self, line: str, always: bool = False) -> None:
        """A plain line (not on a terminal, where the table shows it; a failure always)."""
        if self.live is not None:
            if always:
                self.live.console.print(line, markup=False, highlight=False)
            return
        print(line, file=self.stream, flush=True)

    def _shown(self, row: TrialRow) -> str:
        return (": " + " ".join(f"{m}={_value(v)}" for m, v in row.values.items())) if row.values else ""

    def best(self) -> TrialRow | None:
        """The best trial of one objective (several have a front, no best)."""
        done = [r for r in self.rows.values() if r.objective is not None and r.state != "failed"]
        if not done or len(self.objectives) > 1:
            return None
        return (max if self.mode == "max" else min)(done, key=lambda r: r.objective)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("complete", "pruned", "failed", "running"), 0)
        for r in self.rows.values():
            counts[r.state] = counts.get(r.state, 0) + 1
        counts["waiting"] = max(self.total - len(self.rows), 0)
        return counts

    def left_s(self) -> float | None:
        """Trial-epochs still to train (none pruned: an upper bound) at the pace so far."""
        done = sum(r.epochs for r in self.rows.values())
        if done == 0:
            return None
        elapsed = time.monotonic() - self.t0
        todo = sum(self.max_t - r.epochs for r in self.rows.values() if r.state == "running")
        todo += self.counts()["waiting"] * self.max_t
        return elapsed / done * todo

    def table(self):
        from rich.table import Table

        table = Table(title=self._status(), title_justify="left", caption=self._best_text(),
                      caption_justify="left", expand=False)
        metrics = [m for m, _ in self.objectives]
        for name in ("trial", "state", "epochs", *metrics, *self.knobs):
            table.add_column(name, no_wrap=True, justify="right" if name not in ("trial", "state") else "left")
        for r in list(self.rows.values()):
            table.add_row(r.trial_id, r.state, f"{r.epochs}/{self.max_t}",
                          *("" if r.values.get(m) is None else _value(r.values[m]) for m in metrics),
                          *(_value(r.params.get(k, "")) for k in self.knobs))
        return table

    def _status(self) -> str:
        c = self.counts()
        left = self.left_s()
        tail = f", at most {_duration(left)} left" if left is not None and c["running"] + c["waiting"] else ""
        return (f"{c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed, {c['running']} running, "
                f"{c['waiting']} waiting; {_duration(time.monotonic() - self.t0)} elapsed{tail}")

    def _best_text(self) -> str:
        if len(self.objectives) > 1:
            done = [r for r in self.rows.values() if r.state == "complete" and len(r.values) == len(self.objectives)]
            front = pareto_front([[r.values[m] for m, _ in self.objectives] for r in done],
                                 [mode for _, mode in self.objectives])
            return f"Pareto front: {', '.join(done[i].trial_id for i in front) or 'none yet'}"
        best = self.best()
        if best is None:
            return "best: none yet"
        knobs = " ".join(f"{k}={_value(best.params.get(k))}" for k in self.knobs)
        return f"best: trial {best.trial_id} {self.metric}={_value(best.objective)} ({knobs})"


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt)): (.+)$")


def _tune_error(trial) -> str:
    """The innermost ``SomeError: message`` of the error Tune recorded for ``trial`` (its
    error file on the driver: the trial's exception with the workers' snippets in it)."""
    try:
        text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
    except OSError:
        text = ""
    found = [m for m in map(_ERROR_LINE.match, text.splitlines()) if m]
    if not found:
        return "failed (no reason recorded)"
    name, message = found[-1].groups()
    return f"{name}: {message.strip()}"[:300]


def sweep_view(spec, epochs: int, sweep_dir: str | os.PathLike, stream=None, live: bool | None = None):
    """A :class:`SweepView` that is a Ray Tune ``Callback``."""
    cls = type("TuneSweepView", (SweepView, tune_callback_base()), {})
    return cls(spec, epochs, sweep_dir, stream, live)
