#!/usr/bin/env bash
# One GPU check: train TREC and SST-2 (GLUE, 67k rows) with the default spec on CUDA, export, check parity,
# time onnxruntime. Extra arguments go to bench/gpu_check.py (e.g. --device cpu to run it without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" bench/gpu_check.py "$@"
