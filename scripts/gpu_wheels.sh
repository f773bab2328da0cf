#!/usr/bin/env bash
# The folder benchmarks/gpu_check.sh needs on a GPU node that has torch, torchvision and sentence-transformers but
# cannot reach a package registry: the wheels of the other distributions the check imports (scripts/gpu_wheels.txt,
# at the versions of this checkout's .venv) and the caption model's configuration and tokenizer (not its weights:
# the check's embed section uses random ones). Made here, where pip can download; at most 64 MiB (the size is
# printed; more is an error). DIR is replaced only if it is such a folder (it holds .xclr-gpu-wheels).
#   bash scripts/gpu_wheels.sh [DIR [PYTHON_VERSION]]    defaults: gpu-wheels, 3.12 (the node's python3 --version)
# Then copy DIR into the node's checkout as gpu-wheels/ and run bash benchmarks/gpu_check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-gpu-wheels}
PY=${2:-3.12}
LIMIT_MIB=64
PINS=$(.venv/bin/python -c "import importlib.metadata as m, sys
names = [line.strip() for line in open(sys.argv[1]) if line.strip() and not line.startswith('#')]
print(' '.join(f'{p}=={m.version(p)}' for p in names))" \
  scripts/gpu_wheels.txt)
if [ -e "$DIR" ] && [ ! -e "$DIR/.xclr-gpu-wheels" ]; then
  echo "gpu_wheels: error: $DIR exists and is not a folder this script made" >&2
  exit 2
fi
rm -rf "$DIR"
mkdir -p "$DIR"
touch "$DIR/.xclr-gpu-wheels"
# shellcheck disable=SC2086  # one argument a pin
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DIR" $PINS
PYTHONPATH=schemas:pipeline:trainer:benchmarks .venv/bin/python -c "import sys; from pathlib import Path
from gpu_check import copy_model_files; from xclr_schemas import default_caption_model
copy_model_files(Path(default_caption_model()), Path(sys.argv[1]))" "$DIR/caption-model"
BYTES=$(du -sb "$DIR" | cut -f1)
echo "$DIR: $(ls "$DIR"/*.whl | wc -l) wheels and the caption model's configuration, $((BYTES / 1048576)) MiB" \
  "(limit $LIMIT_MIB MiB)"
[ "$BYTES" -le $((LIMIT_MIB * 1048576)) ] || { echo "gpu_wheels: error: $DIR is over $LIMIT_MIB MiB" >&2; exit 1; }
