"""Test-only fault injection for tests/test_sweep.py, never imported by mpcl.

The test puts this folder on the PYTHONPATH of one ``run.py sweep``; Python imports
``sitecustomize`` at start-up in that driver and in every Ray process it starts (they inherit
the environment). When ``mpcl.launch.worker`` is imported, its ``RayReporter.report`` is
wrapped: in an attempt that did not resume from a checkpoint, rank 0 reports epoch 0
(checkpoint included), then writes ``out/HELD`` and waits until ``out/RELEASE`` exists. The
test so interrupts (or releases) a trial at a known point instead of a moment.
"""

import importlib.abc
import importlib.machinery
import sys
import time

TARGET = "mpcl.launch.worker"
HOLD_EPOCH = 0
HELD_FILE, RELEASE_FILE = "HELD", "RELEASE"


def _hold_after_report(reporter_cls) -> None:
    start, report = reporter_cls.start, reporter_cls.report

    def start_noting_resume(self, state):
        self.started_from_checkpoint = state is not None
        start(self, state)

    def report_then_hold(self, metrics, state):
        report(self, metrics, state)
        if metrics["epoch"] == HOLD_EPOCH and not self.started_from_checkpoint and self.rank == 0:
            (self.out / HELD_FILE).touch()
            while not (self.out / RELEASE_FILE).exists():
                time.sleep(0.1)

    reporter_cls.start = start_noting_resume
    reporter_cls.report = report_then_hold


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds ``TARGET`` as the normal finders do and wraps the reporter once it has executed."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            _hold_after_report(module.RayReporter)

        spec.loader.exec_module = exec_and_wrap
        return spec


sys.meta_path.insert(0, _WrapOnImport())
