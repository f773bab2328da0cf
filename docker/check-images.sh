#!/usr/bin/env bash
# The recorded image check of docs/cluster.md ("Building and checking the image without a registry"), with podman:
#   1. base:    a Debian bookworm root filesystem from the Debian packages (debootstrap), imported as an image;
#   2. build:   docker/Dockerfile on that base, with this machine's way to the package registries mounted into the
#               build where present: the indexes on its disk (/opt/pypi, /opt/pypi-more, /opt/wheels), pip's and
#               npm's configuration and its CA bundle (a proxy's certificate);
#   3. demo:    the main job (scripts/run_demo.sh) in a container;
#   4. cluster: a two-container Ray cluster (head + worker, one CPU each, token auth, on a podman network, one
#               shared volume) running xclr-prep embed (two actors) and graph on 20,000 scene captions; it
#               fails unless actors of both stages ran in the worker container.
# Needs root (debootstrap and rootful podman), about 9 GB for the image and 1 GB under $WORK. Arguments: the steps
# to run (default: all four; the base is made once), or `clean` to remove the containers, images and $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${WORK:-/var/tmp/xclr-images}
base=localhost/debian-bookworm:base
image=localhost/xclr:check
net=xclrcheck
ray_common=(--network "$net" --shm-size 2g -v "$work/shared:/mnt/shared" -e RAY_AUTH_MODE=token
            -e XCLR_WORK_DIR=/mnt/shared/work)

if [ "${1:-}" = clean ]; then
  podman rm -f xclr-head xclr-worker 2>/dev/null || true
  podman network rm "$net" 2>/dev/null || true
  podman rmi -f "$image" "$base" 2>/dev/null || true
  rm -rf "$work"
  exit
fi
mkdir -p "$work"
# Containers get this shell's open-file limit and 32768 processes: podman's defaults are higher, which fails where
# podman itself runs in a container without CAP_SYS_RESOURCE (on the machine this was checked on, any process limit
# above 32768 was refused). runc where cgroups are hybrid (v1 plus a v2 mount; crun refuses those).
export CONTAINERS_CONF=$work/containers.conf
{ echo "[containers]"
  echo "default_ulimits = [\"nofile=$(ulimit -Hn):$(ulimit -Hn)\", \"nproc=32768:32768\"]"
  if mountpoint -q /sys/fs/cgroup/unified; then printf '[engine]\nruntime = "runc"\n'; fi
} > "$CONTAINERS_CONF"
steps=" ${*:-base build demo cluster} "
step() {  # true when step $1 was asked for, and says so
  [[ $steps == *" $1 "* ]] || return 1
  echo "== $1 $(date -u +%T)"
}

if step base && ! podman image exists "$base"; then
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$work/rootfs" http://deb.debian.org/debian
  tar -C "$work/rootfs" -c . | podman import - "$base"
  rm -rf "$work/rootfs"
fi

if step build; then
mounts=()
for path in /opt/pypi /opt/pypi-more /opt/wheels /etc/pip.conf /etc/xdg/pip /etc/npmrc \
            /etc/ssl/certs/ca-certificates.crt; do
  [ -e "$path" ] && mounts+=(--volume "$path:$path:ro")
done
podman build -f docker/Dockerfile --build-arg BASE="$base" "${mounts[@]}" -t "$image" .
podman image inspect "$image" --format 'image size: {{.Size}} bytes'
fi

if step demo; then
mkdir -p "$work/demo-runs"
podman run --rm --shm-size 2g -v "$work/demo-runs:/opt/xclr/runs" "$image" bash scripts/run_demo.sh
fi

step cluster || exit 0
podman rm -f xclr-head xclr-worker 2>/dev/null || true
trap 'podman rm -f xclr-head xclr-worker >/dev/null 2>&1' EXIT
podman network exists "$net" || podman network create "$net" >/dev/null
rm -rf "$work/shared" && mkdir -p "$work/shared"
export RAY_AUTH_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
podman run -d --name xclr-head -e RAY_AUTH_TOKEN "${ray_common[@]}" "$image" \
  ray start --head --port 6379 --num-cpus 1 --disable-usage-stats --block >/dev/null
head_ip=$(podman inspect xclr-head --format "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}")
podman run -d --name xclr-worker -e RAY_AUTH_TOKEN "${ray_common[@]}" "$image" \
  ray start --address "$head_ip:6379" --num-cpus 1 --disable-usage-stats --block >/dev/null
in_head() { podman exec -i xclr-head "$@"; }  # -i: the Python checks come on stdin
in_head python - <<'PY'
import time, ray
deadline = time.monotonic() + 120
while True:  # the head's Ray, then the worker container's node
    try:
        ray.init(address="auto", logging_level="ERROR")
        if sum(n["Alive"] for n in ray.nodes()) == 2:
            break
        ray.shutdown()
    except ConnectionError:
        pass
    assert time.monotonic() < deadline, "the two Ray nodes did not come up within 2 minutes"
    time.sleep(1)
print("Ray nodes alive:", [(n["NodeManagerAddress"], n["Resources"].get("CPU")) for n in ray.nodes() if n["Alive"]])
PY
in_head python -m xclr_prep.sample_corpora scenes /mnt/shared/scenes --n 20000 --per-tar 2000
in_head xclr-prep embed /mnt/shared/scenes --out /mnt/shared/embed --ray-address auto --num-workers 2
in_head xclr-prep graph /mnt/shared/embed --out /mnt/shared/shards --ray-address auto
in_head python - <<'PY'
import collections, json, ray
from ray.util.state import list_actors, list_nodes
ray.init(address="auto", logging_level="ERROR")
worker_node = {n.node_id for n in list_nodes() if not n.is_head_node}
ran = collections.Counter((a.class_name, a.node_id in worker_node) for a in list_actors(limit=10_000, detail=True))
print("actors (class, on the worker container):", dict(ran))
for kind in ("EmbedWorker", "SearchWorker", "ShardWorker"):
    assert ran[(kind, True)] > 0, f"no {kind} ran in the worker container"
embed = json.load(open("/mnt/shared/embed/manifest.json"))["counts"]
shards = json.load(open("/mnt/shared/shards/manifest.json"))["counts"]
print("embed counts:", embed, "\nshard counts:", shards)
PY
echo "== done $(date -u +%T)"
