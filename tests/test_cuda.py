"""The GPU check's device checks (mpcl/bench/gpu_check.py): on CUDA when there is one, and on the CPU
always, so the functions scripts/gpu_check.sh runs without pytest keep working."""

from __future__ import annotations

import pytest
import torch

from mpcl.bench.gpu_check import CHECKS

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_on_cuda(check):
    check(torch.device("cuda"))


# the bf16 step against fp32 trains a few steps of two models: in the full suite
SLOW_ON_CPU = ("check_bf16_step_close_to_fp32",)


@pytest.mark.parametrize("check", [pytest.param(c, marks=pytest.mark.slow) if c.__name__ in SLOW_ON_CPU else c
                                   for c in CHECKS], ids=lambda c: c.__name__)
def test_on_cpu(check):
    check(torch.device("cpu"))
