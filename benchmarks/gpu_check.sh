#!/usr/bin/env bash
# Every GPU figure in one command: benchmarks/gpu_check.py, its options passed on (docs/benchmarks.md, "On a GPU:
# one command").
#   bash benchmarks/gpu_check.sh                        # on a GPU: runs/gpu-check/gpu-check.{json,txt}
#   bash benchmarks/gpu_check.sh --device cpu --quick   # the CPU dry run
# Python: $PYTHON, else python3. Either it has the project's dependencies (.venv/bin/python here), or it has torch,
# torchvision and sentence-transformers only and the rest comes from the folder scripts/gpu_wheels.sh made, copied
# into the checkout as gpu-wheels/ (or named in XCLR_GPU_WHEELS): its wheels are installed offline into
# $XCLR_GPU_SITE (default /tmp/xclr-gpu-site), and its copy of the caption model's configuration and tokenizer is the
# embed section's.
set -euo pipefail
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # the node may have no network: no lookup may wait on one
WHEELS=$(realpath -m "${XCLR_GPU_WHEELS:-$(dirname "$0")/../gpu-wheels}")
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${XCLR_GPU_SITE:-/tmp/xclr-gpu-site}
EXTRA=()
if [ -d "$WHEELS" ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  EXTRA=(--model-files "$WHEELS/caption-model")
fi
export PYTHONPATH="schemas:pipeline:trainer:benchmarks${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py ${EXTRA[@]+"${EXTRA[@]}"} "$@"  # bash < 4.4: an empty array is unset
