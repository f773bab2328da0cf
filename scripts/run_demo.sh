#!/usr/bin/env bash
# The main job on real offline data: set up .venv, then embed two real corpora with xclr-prep embed
#   - the tuxpaint stamps as img2dataset-style tars (image + caption + label), and
#   - 20k WordNet definitions and examples (a caption-only Parquet table),
# build the stamps' caption graph and neighbour-grouped training shards with xclr-prep graph, and show a few
# neighbour groups read back from the shards with the plain webdataset library; then train a small encoder on the
# shards with xclr-train (X-CLR, sparse targets; a few CPU steps to show the loop, not a useful model).
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

.venv/bin/xclr-prep graph "$runs/tuxpaint-embed" --out "$runs/tuxpaint-shards" --shard-samples 200

$py - "$runs/tuxpaint-shards" <<'PY'
import json, sys
from itertools import groupby
import webdataset as wds
from xclr_schemas import load_npy, read_shards_manifest

root = sys.argv[1]
sizes = json.load(open(f"{root}/sizes.json"))
samples = wds.WebDataset([f"{root}/{name}" for name in sizes], shardshuffle=False)
groups = groupby(samples, key=lambda s: json.loads(s["json"])["group"])
for _, (gid, group) in zip(range(3), groups):
    group = list(group)
    print(f"\ngroup {gid}: {len(group)} samples")
    for s in group:
        top = load_npy(s["nbr.npy"])[0]
        print(f"   {s['__key__']}  {s['txt'].decode()!r:40}  best neighbour sim {top['sim']:.2f}")
m = read_shards_manifest(root)
print(f"\n{m['counts']['written']} samples in {m['counts']['shards']} shards; "
      f"mean in-group graph neighbours per sample {m['groups']['in_group_neighbors_mean']:.2f} "
      f"(group size {m['options']['group_size']}); background similarity "
      f"{m['graph']['background_similarity']['mean']:.3f}, mean k-th neighbour {m['graph']['kth_similarity_mean']:.3f}")
PY

resume=(); [ -f "$runs/tuxpaint-train/checkpoints/latest.pt" ] && resume=(--resume latest)
.venv/bin/xclr-train --data "$runs/tuxpaint-shards" --out "$runs/tuxpaint-train" --arch resnet18 --image-size 32 \
  --batch-size 32 --steps 20 --samples-per-epoch 320 --workers 1 --log-every 5 "${resume[@]}"
echo
echo "embed directories: $runs/tuxpaint-embed and $runs/wordnet-embed; shards: $runs/tuxpaint-shards"
echo "training run: $runs/tuxpaint-train (metrics.jsonl, checkpoints/)"
