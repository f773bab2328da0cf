#!/usr/bin/env bash
# Multi-node training: run this same script on every node (e.g. from a Slurm or Kubernetes job), in the xclr:cuda
# image (docker run --gpus all --network host --shm-size 16g xclr:cuda bash docker/train-multinode.sh) or in .venv.
#   NNODES      number of nodes                      HEAD    host name or IP of the rendezvous node (any one node)
#   GPUS        GPUs per node [8]                    JOB     rendezvous id, the same on every node [xclr]
#   DATA, OUT   shards and run directory: local paths on a shared filesystem, or s3:// / gs:// URLs
# Every rank reads the shards itself; rank 0 writes the run (an OUT URL is uploaded after every checkpoint).
# A rank or node that dies makes torchrun restart the whole group (up to --max-restarts); with --resume latest
# the restarted group goes on from the last checkpoint (a new run starts from scratch), so the steps after that
# checkpoint are recomputed exactly, not skipped or duplicated. A scheduler's SIGTERM or SIGUSR1 (SLURM --signal,
# Kubernetes eviction) reaches torchrun, which passes it to every rank and waits GRACE seconds [120] before killing
# them: the ranks finish their step, save latest.pt at it and exit 75 (docs/cluster.md, Preemption).
# Extra arguments go to xclr-train.
set -euo pipefail
: "${NNODES:?}" "${HEAD:?}" "${DATA:?}" "${OUT:?}"
# torch 2.14's torchrun reuses one rendezvous store across restarts, and restarted ranks can meet the dead group's
# addresses (pytorch/pytorch#135712); a fresh store per restart avoids it.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
exec torchrun --nnodes "$NNODES" --nproc-per-node "${GPUS:-8}" --max-restarts 3 \
  --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout "${GRACE:-120}" \
  --rdzv-backend c10d --rdzv-endpoint "$HEAD:29400" --rdzv-id "${JOB:-xclr}" \
  -m xclr_train --data "$DATA" --out "$OUT" --resume latest "$@"
