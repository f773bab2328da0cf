#!/usr/bin/env bash
# The main job on real offline data: set up .venv, then embed two real corpora with xclr-prep embed
#   - the tuxpaint stamps as img2dataset-style tars (image + caption + label), and
#   - 20k WordNet definitions and examples (a caption-only Parquet table),
# and show each stamp caption's nearest other captions, read back through xclr_schemas.load_embed_dir.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
runs=runs/demo
mkdir -p "$runs"
py=.venv/bin/python

[ -f "$runs/tuxpaint-tars/classnames.txt" ] || $py -m xclr_prep.sample_corpora tuxpaint "$runs/tuxpaint-tars"
.venv/bin/xclr-prep embed "$runs/tuxpaint-tars" --out "$runs/tuxpaint-embed" --label-col label

[ -f "$runs/wordnet-20k.parquet" ] || $py -m xclr_prep.sample_corpora wordnet "$runs/wordnet-20k.parquet" --limit 20000
.venv/bin/xclr-prep embed "$runs/wordnet-20k.parquet" --out "$runs/wordnet-embed"

$py - "$runs/tuxpaint-embed" <<'PY'
import sys
import numpy as np
from xclr_schemas import load_embed_dir

d = load_embed_dir(sys.argv[1])
e = d.embeddings.astype(np.float32)
for i in np.random.default_rng(0).choice(len(d.captions), 4, replace=False):
    sims = e @ e[i]
    sims[i] = -1
    best = np.argsort(-sims)[:3]
    print(f"\n{d.captions[i]!r}\n" + "\n".join(f"   {sims[j]:.2f}  {d.captions[j]!r}" for j in best))
PY
echo
echo "embed directories: $runs/tuxpaint-embed and $runs/wordnet-embed (manifest.json in each)"
