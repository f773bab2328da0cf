#!/usr/bin/env bash
# Creates .venv-openclip at the repository root: open_clip 3.3.0 with its trainer (open_clip_train), for the
# emoji study's CLIP baseline (benchmarks/openclip_clip.py) and its test (tests/test_openclip.py).
# Why a second environment beside .venv: open_clip's `training` extra pins webdataset<=0.2.86, and its trainer fails
# on the end-of-shard marker with the webdataset 1.0.2 that xclr needs; open_clip is a baseline, not a dependency of
# xclr, so nothing of xclr is installed here and nothing of open_clip in .venv (xclr-eval reads open_clip checkpoints
# without importing open_clip: evaluation/xclr_eval/openclip.py).
# Offline at run time: open_clip's default tokenizer ships its BPE vocabulary in the wheel, and the model config is
# local (benchmarks/openclip/); run it with HF_HUB_OFFLINE=1.
# Idempotent: a second call only re-installs when the pins below changed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-openclip
pins=(torch==2.14.1 torchvision==0.29.1 "open-clip-torch[training]==3.3.0" webdataset==0.2.86 timm==1.0.31
      transformers==5.24.0)
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
echo '*' > "$venv/.gitignore"   # the repository's .gitignore names .venv/ only
stamp=$venv/.openclip-installed
want=$(echo "${pins[*]}" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip() { "$venv/bin/python" -m pip -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
  pip install --upgrade pip
  pip install torch==2.14.1 torchvision==0.29.1   # from this machine's disk first (a plain torch requirement pulls GBs)
  pip install "${pins[@]}"
  echo "$want" > "$stamp"
fi
