#!/usr/bin/env bash
# The main job on real offline data, the whole pipeline on a CPU, as one seed of the emoji study's own setting
# (docs/emoji-study.md; its time: docs/benchmarks.md, Suite and main job): set up .venv, then
#   write  the emoji of three vendors (Google's Noto, Twitter's Twemoji, OpenMoji) as img2dataset-style tars,
#          captioned by the emoji's name;
#   embed  xclr-prep embed: the captions of the google and OpenMoji images (one caption per emoji, shared by both);
#   graph  xclr-prep graph: their top-k caption graph and WebDataset shards (a few captions and their graph
#          neighbours are printed, read back with the plain webdataset library);
#   train  xclr-train: a small CNN with X-CLR and with SimCLR, each at the learning rate and temperature the study
#          chose on its validation rotation (benchmarks/results/emoji-choices.json), 600 steps of 128;
#   eval   xclr-eval: Twitter's images, a style training never saw, as queries against the training images: kNN and
#          linear probe by subcategory and category, finding the same emoji (caption R@k), caption alignment, and a
#          picture of each method's nearest images for a few queries.
# It ends with the study's verdict on X-CLR against SimCLR in this setting (benchmarks/emoji_demo.py). Rerunning
# resumes or reuses what is finished.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
.venv/bin/python benchmarks/study.py --root runs/demo --plan demo --seeds 0
