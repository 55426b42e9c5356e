#!/usr/bin/env bash
# The GPU check (issue 5): one script, a few minutes on one GPU. It prints
#  1. ResNet50 training images/s at batch 256: the plain fp32 loop of the common recipe
#     against the worker's fast path, on synthetic data and on a cached data set;
#  2. a short real study (server + worker on the GPU) with its trials/hour, for
#     --trials-per-gpu K = 1, 2, 4 (a small model that cannot fill the GPU alone).
# Run from the repository root in an environment with torch, torchvision and the server's
# packages. On the project's lent GPU machine (torch there, no server packages) the missing
# ones travel as wheels in .whl/ (see bench/RESULTS.md, "GPU check", for the list) and the run
# starts with: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#              && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== ResNet50 throughput (batch 256, 224 px)"
$PY bench/gpu_throughput.py --device cuda --arch resnet50 --batch 256 --image-size 224 \
    --iters 15 --repeats 3 --compile
echo "== short real study on the GPU"
$PY bench/gpu_study.py --device cuda:0 --arch resnet18 --image-size 64 --batch 128 \
    --trials 8 --epochs 3 --per-gpu 1 2 4
