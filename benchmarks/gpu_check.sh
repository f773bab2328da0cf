#!/usr/bin/env bash
# Every GPU figure in one command: benchmarks/gpu_check.py, its options passed on (docs/benchmarks.md, "On a GPU:
# one command").
#   bash benchmarks/gpu_check.sh                        # on a GPU: runs/gpu-check/gpu-check.{json,txt}
#   bash benchmarks/gpu_check.sh --device cpu --quick   # the CPU dry run
# Python: $PYTHON, else python3 (one with torch, torchvision and sentence-transformers). A node without the
# project's other dependencies gets them from the folder scripts/gpu_wheels.sh made, copied into the checkout as
# gpu-wheels/ (or named in XCLR_GPU_WHEELS): its wheels are installed offline into $XCLR_GPU_SITE, and its copy of
# the caption model's configuration and tokenizer is the embed section's.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${XCLR_GPU_WHEELS:-gpu-wheels}
SITE=${XCLR_GPU_SITE:-/tmp/xclr-gpu-site}
EXTRA=()
if [ -d "$WHEELS" ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  EXTRA=(--model-files "$WHEELS/caption-model")
fi
export PYTHONPATH="schemas:pipeline:trainer:benchmarks${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py "${EXTRA[@]}" "$@"
