"""Test-only fault injection, never imported by mpcl.

A test puts this folder on the PYTHONPATH of one command and names the fault in
``MPCL_TEST_FAULT``; Python imports ``sitecustomize`` at start-up in that driver and in every
Ray process it starts (they inherit the environment). When ``mpcl.launch.worker`` is imported,
the fault is installed in it:

- ``hold_after_first_epoch``: ``RayReporter.report`` is wrapped: in an attempt that did not
  resume from a checkpoint, rank 0 reports epoch 0 (checkpoint included), then writes
  ``out/HELD`` and waits until ``out/RELEASE`` exists. The test so interrupts (or releases) a
  trial at a known point instead of a moment.
- ``crash_full_attention``: a worker whose config has ``method.attention_weight == 1.0``
  raises ``RuntimeError`` before training (an unexpected crash, with a traceback).
"""

import importlib.abc
import importlib.machinery
import os
import sys
import time

TARGET = "mpcl.launch.worker"
HOLD_EPOCH = 0
HELD_FILE, RELEASE_FILE = "HELD", "RELEASE"
CRASH_MESSAGE = "injected crash for the test"


def _hold_after_report(module) -> None:
    reporter_cls = module.RayReporter
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


def _crash_full_attention(module) -> None:
    train = module._train

    def crash_or_train(config):
        if getattr(config["cfg"].method, "attention_weight", None) == 1.0:
            raise RuntimeError(CRASH_MESSAGE)
        train(config)

    module._train = crash_or_train


FAULTS = {"hold_after_first_epoch": _hold_after_report, "crash_full_attention": _crash_full_attention}


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds ``TARGET`` as the normal finders do and installs the fault once it has executed."""

    def __init__(self, fault):
        self.fault = fault

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            self.fault(module)

        spec.loader.exec_module = exec_and_wrap
        return spec


if os.environ.get("MPCL_TEST_FAULT") in FAULTS:
    sys.meta_path.insert(0, _WrapOnImport(FAULTS[os.environ["MPCL_TEST_FAULT"]]))
