#!/usr/bin/env bash
# The main job on real offline data, the whole pipeline on a CPU (its time: docs/benchmarks.md, Suite and main
# job): set up .venv, write the emoji of three vendors (Google's Noto, Twitter's Twemoji, OpenMoji) as
# img2dataset-style tars, captioned by the emoji's name, then
#   embed  xclr-prep embed: the captions of the google and twitter images (one caption per emoji, shared by both);
#   graph  xclr-prep graph: their top-k caption graph and WebDataset shards, neighbour-grouped for X-CLR and in random
#          order for SimCLR (a few groups are printed, read back with the plain webdataset library);
#   train  xclr-train: a small CNN with X-CLR (sparse targets) and with SimCLR, on the same budget as one seed of the
#          quality study (150 steps of 128);
#   eval   xclr-eval: OpenMoji's images, a style training never saw, as queries against the training images: kNN and
#          linear probe by subcategory and category, finding the same emoji (caption R@k), caption alignment, and a
#          picture of each method's nearest images for a few queries.
# It ends by setting the difference it measured against the quality study's seed spread. Rerunning resumes or reuses
# what is finished.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
runs=runs/demo
mkdir -p "$runs"
py=.venv/bin/python

[ -f "$runs/emoji-tars/counts.json" ] || $py -m xclr_prep.sample_corpora emoji "$runs/emoji-tars"
.venv/bin/xclr-prep embed "$runs/emoji-tars/google" "$runs/emoji-tars/twitter" --out "$runs/emoji-embed" \
  --label-col label
.venv/bin/xclr-prep graph "$runs/emoji-embed" --out "$runs/emoji-groups" --group-size 8 --shard-samples 1000
.venv/bin/xclr-prep graph "$runs/emoji-embed" --out "$runs/emoji-random" --group-size 1 --shard-samples 1000 \
  --graph "$runs/emoji-groups/graph"

$py - "$runs/emoji-groups" <<'PY'
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
        print(f"   {s['__key__']:28}  {s['txt'].decode()!r:36}  best neighbour sim {top['sim']:.2f}")
m = read_shards_manifest(root)
print(f"\n{m['counts']['written']} samples in {m['counts']['shards']} shards; "
      f"mean in-group graph neighbours per sample {m['groups']['in_group_neighbors_mean']:.2f} "
      f"(group size {m['options']['group_size']}); background similarity "
      f"{m['graph']['background_similarity']['mean']:.3f}, mean k-th neighbour {m['graph']['kth_similarity_mean']:.3f}")
PY

for loss in xclr simclr; do
  run="$runs/emoji-$loss"
  shards="$runs/emoji-random"; [ "$loss" = xclr ] && shards="$runs/emoji-groups"
  resume=(); [ -f "$run/checkpoints/latest.pt" ] && resume=(--resume latest)
  .venv/bin/xclr-train --data "$shards" --out "$run" --loss "$loss" --arch convnet --image-size 32 \
    --proj-hidden 512 --batch-size 128 --optimizer adamw --steps 150 --samples-per-epoch 19200 --workers 1 \
    --log-every 10 "${resume[@]}"
done

database="{$(ls "$runs"/emoji-tars/{google,twitter}/*.tar | paste -sd,)}"
.venv/bin/xclr-eval "$runs"/emoji-{xclr,simclr}/checkpoints/latest.pt --data "$database" \
  --queries "$runs/emoji-tars/openmoji" --label-field subcategory --label-field category --no-clustering --out "$runs/eval"
$py scripts/verdict.py "$runs/eval/results.json"
echo
echo "corpus: $runs/emoji-tars (counts.json)   embed: $runs/emoji-embed   shards: $runs/emoji-groups, $runs/emoji-random"
echo "training runs: $runs/emoji-xclr, $runs/emoji-simclr (metrics.jsonl, checkpoints/)"
echo "evaluation: $runs/eval/results.md (table), results.json; plots: $runs/eval/plots/*.png"
echo "  nearest.png: held-out OpenMoji queries and their nearest google/twitter images under each method"
