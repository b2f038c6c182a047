#!/usr/bin/env bash
# The GPU check on a bare CUDA machine (python3 with torch, torchvision, numpy, pyyaml, tqdm,
# pillow; no venv, no pytest): the CUDA checks, one Fashion-MNIST epoch of each paper method,
# `mpcl bench step` (results in runs/gpu_check/bench, recorded in BENCHMARKS.md: recording the
# figures is the point of the check), then one summary table.
#   scripts/gpu_check.sh [FASHION_MNIST_DIR] [more options of mpcl bench gpu-check]
# The folder holds the four raw idx files; default: $MPCL_FMNIST, else /usr/share/datasets/fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-${MPCL_FMNIST:-/usr/share/datasets/fashion-mnist}}"
shift || true
exec "${PYTHON:-python3}" -m mpcl.bench.gpu_check --data "$data" --record BENCHMARKS.md "$@"
