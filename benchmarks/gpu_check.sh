#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the CUDA path of run and eval, a 2-process torchrun evaluation
# that must match one process, paper-preset training steps with and without activation checkpointing,
# and the attack engine's throughput at paper scale; one table, under ten minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [--batch-size 16] [--steps 5]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
