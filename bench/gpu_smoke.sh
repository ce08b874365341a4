#!/usr/bin/env bash
# On a GPU machine: the default recipe for a few dozen steps on CUDA (bf16 autocast), then
# checks that the loss falls and that the fused chunked loss equals the unfused one there.
#   bash bench/gpu_smoke.sh [STEPS]
# Needs a CUDA build of torch in .venv (scripts/setup.sh installs the CPU wheel; on a GPU
# machine: .venv/bin/pip install torch==2.13.0 --index-url <your CUDA wheel index>).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-40}
name="gpu-smoke-$(date +%s)"
.venv/bin/potstill run name="$name" device=cuda train.steps="$steps" train.warmup=5 \
  budget_minutes=null eval.baseline=false
.venv/bin/python bench/gpu_smoke.py --run-dir "runs/$name"
