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


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_on_cpu(check):
    check(torch.device("cpu"))
