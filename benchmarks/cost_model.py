"""Cost model of the pipeline: wall time, peak memory and disk of every stage, calibrated on small runs of the real
commands, checked against measured runs at 10k, 30k, 100k and 1M captions (and a graph-only run at 3M), and
extrapolated to 1M, 3M (CC3M) and 12M (CC12M) captions on a stated cluster.

    HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 .venv/bin/python benchmarks/cost_model.py

Measuring. Every measurement is a run of the command a user types (`xclr-prep embed`, `xclr-prep graph`,
`xclr-train`) in its own process, started once the shared machine is quiet (<= 20% CPU busy over 10 s). Its result
is cached in ROOT/results/NAME.json (delete one to measure it again), so an interrupted run resumes. Recorded: wall
time; the peak over 4 Hz samples of the summed RSS of the command's process tree (Ray's processes and DataLoader
workers included), also split into the driver (the command's process), the stage's Ray actors (EmbedWorker,
SearchWorker, ShardWorker) and the rest, the largest RSS of one actor of each kind, the driver's anonymous RSS (less
its memory-mapped files), and for `graph` into the search phase and the shard phase (before / after
graph/manifest.json exists); the bytes of the files the stage leaves; `others_cpu`, the share of the machine's CPU
time that other processes used during the run (the machine is shared).

Corpus. The scene captions of `xclr_prep.scene_captions` (seed 0: unique, so U = N), each with Fashion-MNIST image
i mod 70,000 (PNG, about 0.3 KB; images repeat), img2dataset-style tars of 1000 samples (KEY.png, KEY.txt): every
size draws from the same distribution and a smaller corpus is a prefix of a larger one. The graph-only check at 3M
runs on the 1M embeddings grown to 3M (`write_grown_embed_dir`: noisy copies, the cluster structure kept). The
graph stage runs with --shard-samples 1000 (so that the small runs have a shard per writer); training uses the
quality study's CPU set-up (32 px convnet, batch 128, AdamW, one DataLoader worker).

Model. N input captions (= samples), U = u N unique (u measured), D = 384, k = 32. The stated cluster has K CPU nodes
of C cores; c0 = this machine's cores; s = c0 / (K C) scales a per-item cost measured here to all the cluster's cores,
s1 = c0 / C to one node (linear scaling in cores is assumed, not measured). (a, b): two-point fits y = a + b x at the
calibration sizes (2k and 20k captions; 5 and 25 training steps), b < 0 (noise) set to 0; c: a constant (the mean of
the two calibration runs), used where the code does no per-item work worth measuring at 20k. The larger calibration
size exceeds ENCODE_CHUNK (16,384): the embed stage sorts each chunk of captions by length before batching them,
and a corpus smaller than one chunk pads more per caption than a large one does.

  time    embed   T = a + b N s                  (a: Ray, actor and model start; b: scan, dedup, encode, write)
          search  T = c + c' + 2 * 2000 U D / (eta G) s1 + X
                  c: process and Ray start, embedding check; c': search actor start, background similarity;
                  2000 exact recall queries on one node; G: this machine's float32 GEMM rate (numpy, the search's
                  block shape), eta: the fraction of G exact search reaches (benchmarks/results/graph.json, this
                  machine, 164,878 captions). X, by what `--index auto` picks:
                  exact (U <= 250k, or where the IVF index does not fit in half a node):  X = 2 U^2 D / (eta G) s
                  ivf (above): X = (t_rest + 2 D B(U) / G + 2 D Q U / (eta G) + t_tune' q(U) / q(U0)) s1
                                   + t_query (U / U0) q(U) / q(U0) s
                  U0: the largest check size <= 250k, where the `--index ivf` run gives t_build, t_tune and
                  t_query (its search phase less the build, the tuning and the exact recall queries).
                  Build: B(U) = (640 nlist + U) nlist, the k-means (10 iterations over 64 points per list) and
                  the assignment of every vector, run as float32 GEMMs at G; t_rest = t_build - 2 D B(U0) / G
                  (training the codes, encoding: held constant). Tuning: Q = 1000 exact reference queries, and
                  t_tune' (t_tune less those at U0) of index searches. A query: q(U) = q0 + q_p nprobe
                  + q_c nprobe U / nlist + q_r refine (k + 1): the lists probed, their 4-bit codes scanned and the
                  candidates re-ranked; q0, q_p, q_c, q_r fitted (least squares) to indexes built on U0 / 4 and U0
                  captions searched at a grid of nprobe x refine (ivf_query_costs). nprobe and refine are held at
                  their values tuned at U0 (assumed).
                  hnsw (`--index hnsw`): X = (t_build + t_tune) L s1 + t_query L s, L = U log2 U / (U0 log2 U0);
                  t_*: HNSW32 at U0 = 164,878 on this machine (graph.json)
          shards  T = (a + b N) + (a' + b' N s)  (layout on the driver; locate + write, one writer per CPU)
          train   CPU: T = a + b S / R, S = N / 128 steps per epoch (the check runs S = N / 1000), R = K C / c0 ranks
                  each as the 2-core process measured here
                  GPU: T = N / (GPUs x min(model samples/s, W x loader samples/s per worker)), ResNet-50 at 224 px,
                  bf16, from the earlier H100 run (benchmarks/results/train_gpu_h100.json); W workers per GPU
  memory  peak of the head node (it runs the driver): M = M0 + (A - A0) M_actor + anon(N) + mapped(N)
          M0: the calibration peaks less the N terms below at their size (mean); M_actor: peak per actor; A0, A:
          actors here and per node (embed: one per 8 CPUs, search: 1, shard writers: C). N terms, from the code
          and docs/prep.md:
          embed   anon = 80 B N                     the driver's dedup
          search  anon = min(U, 32768) D 9          the driver's embedding check (a float32 block, its squares,
                                                    the finiteness mask)
                         [+ index_bytes(U)]         the IVF / HNSW index, in each node's search actor
                  mapped = U D 2                    fp16 embeddings, read whole by the driver and the search actor
          shards  anon = 200 B N                    the driver's numbers per sample (xclr_prep.shard_stage; at
                                                    2k-20k the driver's peak is set by allocator arenas, so a
                                                    calibration slope says nothing about it)
                  mapped = U k 12                   neighbors.npy, read by the driver and the writers
                         + U D 2                    the fp16 embeddings the driver mapped for its check (the
                                                    pages it read stay in its RSS)
                         + b_r N                    the row and text files (b_r: their bytes per sample), read by
                                                    the writers
          train   M = M0 C / c0                     (C / c0 ranks per node)
          RSS counts a mapped file once per process that reads it: the check compares that; on the cluster it is
          counted once per node and also reported alone ("mapped": page cache, shared and reclaimable).
  disk    embed a + b N; graph a + b U (+ index_bytes(U) for an IVF / HNSW index file); shards a + (o + I) N with I the
          mean image bytes (this corpus: Fashion-MNIST's, or --image-bytes) and o the rest of a sample; train: the run
          directory (constant); GPU training: two ResNet-50 checkpoints (latest.pt + epoch-0001.pt), their size
          measured by a 1-step CPU run of xclr-train.

IVF is calibrated by an `--index ivf` run at 100k and the query costs of IVF indexes on 25k and 100k captions
(ivf_query_costs, cached in ROOT/results/ivf-queries-100000.json). The check runs the same commands at 10k, 30k,
100k and 1M captions (training: N / 1000 steps of 128 samples, at most CHECK_MAX_STEPS: partial epochs), plus
`--index hnsw` at 100k and the graph-only run at 3M, and reports (predicted - measured) / measured. Outputs:
OUT/cost_model.json, OUT/cost_model.md and OUT/cost-plots/{predicted-vs-measured,scale}.png.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

from xclr_prep import knn
from xclr_prep.graph_stage import EXACT_MAX_CPU, VALIDITY_BLOCK
from xclr_prep.knn import REFINE_FACTORS, index_bytes, ivf_lists
from xclr_prep.search_stage import RECALL_QUERIES, TUNING_QUERIES
from xclr_schemas import EmbeddingRows
from xclr_schemas.names import CHECKPOINTS, GRAPH, LATEST, LAYOUT, MANIFEST, METRICS

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
RESULTS = Path(__file__).parent / "results"
PER_TAR = 1000
DIM, K_NEIGHBORS, BLOCK = 384, 32, 16_384
ACTORS = ("EmbedWorker", "SearchWorker", "ShardWorker")
TRAIN_BATCH = 128
TRAIN_ARGS = ["--arch", "convnet", "--image-size", "32", "--proj-hidden", "512", "--proj-dim", "128",
              "--batch-size", str(TRAIN_BATCH), "--optimizer", "adamw", "--workers", "1", "--device", "cpu",
              "--log-every", "1", "--no-progress"]
CHECKPOINT_ARGS = ["--arch", "resnet50", "--image-size", "224", "--batch-size", "8", "--optimizer", "lars",
                   "--workers", "1", "--device", "cpu", "--steps", "1", "--samples-per-epoch", "8", "--no-progress"]
STAGES = ("embed", "graph search", "shard writing", "train")
COEFFICIENTS = {"embed": "embed", "graph search": "search", "shard writing": "shards"}
# Memory that grows with N, from the code and docs/prep.md (see memory_terms)
DEDUP_BYTES = 80  # embed driver: caption digests and ids per input row (docs/prep.md, "Ray, resume and faults")
LAYOUT_BYTES = 200  # shard driver: the layout's numbers per sample (xclr_prep.shard_stage docstring)
CONTENDED = 0.2  # a run during which others took more of the CPU is measured again (cached)
GROWN_NOISE = 0.5  # the grown corpus's copies: cosine about 1 / sqrt(1 + 0.25) = 0.89 to their source caption
GROWN_PART = 100_000
CHECK_MAX_STEPS = 200  # training steps of a check run: N / 1000, at most this
IVF_GRID_QUERIES = 2_000  # queries timed per setting in ivf_query_costs


@dataclass
class Cluster:
    """Where a prediction is for: K CPU nodes of C cores (prep and CPU training) and GPU nodes (GPU training)."""

    name: str
    nodes: int
    cores: int
    memory_gib: float
    gpu_nodes: int = 0
    gpus_per_node: int = 0
    loader_workers_per_gpu: int = 0


# ----------------------------------------------------------------------------------------------------- measuring

def busy_cpu_seconds() -> float:
    """CPU seconds this machine has spent busy (not idle or waiting for I/O) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def sample_tree(proc: subprocess.Popen, marker: Path | None, stop: threading.Event, peaks: dict,
                cpu: dict) -> None:
    """Until `stop`: every 0.25 s add up the RSS of `proc`'s process tree by role and keep, per phase ("before" /
    "after" `marker` exists, or "all"), the peak of the total and of each role, the most actors seen, the largest
    RSS of one actor of each kind (ACTORS), and the driver's anonymous RSS (RSS less file-backed pages: memory-mapped
    files); keep each process's CPU seconds as last seen in `cpu` (pid -> seconds)."""
    root = psutil.Process(proc.pid)
    while not stop.is_set():
        phase = "all" if marker is None else ("after" if marker.exists() else "before")
        sums = {"driver": 0, "actors": 0, "rest": 0}
        largest = {kind: 0 for kind in ACTORS}
        n_actors = driver_anon = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                with p.oneshot():
                    mem, times, title = p.memory_info(), p.cpu_times(), " ".join(p.cmdline()[:1])
            except psutil.Error:  # gone, or a zombie
                continue
            kind = next((a for a in ACTORS if a in title), None)
            role = "driver" if p.pid == proc.pid else "actors" if kind else "rest"
            sums[role] += mem.rss
            n_actors += role == "actors"
            if kind:
                largest[kind] = max(largest[kind], mem.rss)
            if role == "driver":
                driver_anon = mem.rss - mem.shared
            cpu[p.pid] = times.user + times.system
        got = peaks.setdefault(phase, {"total": 0, "driver": 0, "actors": 0, "rest": 0, "n_actors": 0,
                                       "driver_anon": 0, **{f"one_{kind}": 0 for kind in ACTORS}})
        for role, value in (*sums.items(), ("total", sum(sums.values())), ("n_actors", n_actors),
                            ("driver_anon", driver_anon), *((f"one_{k}", v) for k, v in largest.items())):
            got[role] = max(got[role], value)
        stop.wait(0.25)


def wait_quiet(limit: float = 900.0) -> float:
    """Wait (at most `limit` s) until the machine's CPUs were at most 20% busy over 10 s (it is shared); return
    that busy fraction."""
    deadline = time.monotonic() + limit
    busy = psutil.cpu_percent(interval=10) / 100
    while busy > 0.2 and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=10) / 100
    return busy


def run_measured(cmd: list[str], marker: Path | None = None) -> dict:
    """Run `cmd` (failing loudly with its stderr) once the machine is quiet; return wall seconds, memory peaks, the
    CPU busy fraction before it, and `others_cpu`: the share of the machine's CPU time during the run spent by
    processes outside the command's tree and this script (other users of the shared machine)."""
    busy = wait_quiet()
    me = psutil.Process()
    busy0, me0 = busy_cpu_seconds(), sum(me.cpu_times()[:2])
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    peaks: dict = {}
    cpu: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_tree, args=(proc, marker, stop, peaks, cpu), daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{stderr[-4000:]}")
    own = sum(cpu.values()) + sum(me.cpu_times()[:2]) - me0
    others = max(0.0, busy_cpu_seconds() - busy0 - own) / (wall * os.cpu_count())
    return {"command": cmd, "wall_seconds": wall, "peaks": peaks, "stdout": stdout[-2000:], "busy_before": busy,
            "others_cpu": others, "tree_cpu_seconds": sum(cpu.values())}


def dir_bytes(path: Path, exclude: Path | None = None) -> int:
    """Apparent size of the files under `path` (those under `exclude` left out)."""
    return sum(f.stat().st_size for f in path.rglob("*")
               if f.is_file() and (exclude is None or exclude not in f.parents))


def cached(root: Path, name: str, outputs: list[Path], measure: Callable[[], dict]) -> dict:
    """ROOT/results/NAME.json if present; else `measure()` (after removing `outputs`: a half-finished run) and save
    it. A run under 10 minutes during which other processes took over CONTENDED of the machine's CPU is measured
    again, up to 3 times; the least contended is kept."""
    path = root / "results" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    tries: list[dict] = []
    while not tries or (len(tries) < 3 and tries[-1]["others_cpu"] > CONTENDED and tries[-1]["wall_seconds"] < 600):
        for out in outputs:
            shutil.rmtree(out, ignore_errors=True)
        print(f"measuring {name} ...", flush=True)
        tries.append(measure())
        print(f"  {name}: {tries[-1]['wall_seconds']:.1f} s, others' CPU {100 * tries[-1]['others_cpu']:.0f}%",
              flush=True)
    # the outputs left are the last try's: the same files whichever try is kept (the stages are deterministic)
    best = min(tries, key=lambda t: t["others_cpu"])
    result = {"name": name, "cores": os.cpu_count(), "tries": len(tries), **best}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def write_corpus(root: Path, n: int) -> list[Path]:
    """The first `n` samples of the corpus (module docstring) as tars of PER_TAR samples; reuses tars written."""
    from xclr_prep.sample_corpora import write_scene_tars

    if n % PER_TAR:
        raise SystemExit(f"sizes must be multiples of {PER_TAR}, not {n}")
    corpus = root / "corpus"
    tars = [corpus / f"{i:05d}.tar" for i in range(n // PER_TAR)]
    if not all(t.exists() for t in tars):  # a prefix of a larger corpus: write them all again, seeded
        write_scene_tars(corpus, n, seed=0, per_tar=PER_TAR)
    return tars


def mean_image_bytes() -> float:
    """Mean bytes of the corpus' images (Fashion-MNIST PNGs)."""
    from PIL import Image

    from xclr_prep.sample_corpora import fashion_mnist

    def png(image: np.ndarray) -> int:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        return len(buf.getvalue())

    return float(np.mean([png(image) for image in fashion_mnist("train")[0][:5000]]))


def measure_embed(root: Path, n: int) -> dict:
    out = root / f"embed-{n}"

    def measure() -> dict:
        tars = write_corpus(root, n)
        run = run_measured([str(BIN / "xclr-prep"), "embed", *map(str, tars), "--out", str(out), "--no-progress"])
        manifest = json.loads((out / MANIFEST).read_text())
        return {**run, "n": n, "unique_captions": manifest["counts"]["unique_captions"], "timing": manifest["run"],
                "disk_bytes": dir_bytes(out)}

    return cached(root, f"embed-{n}", [out], measure)


def write_grown_embed_dir(source: Path, out: Path, n: int) -> Path:
    """An embed directory of `n` captions grown from the complete one at `source` (U captions, one sample each):
    caption i < U is source caption i; caption i >= U is a noisy copy of source caption i mod U, the unit vector
    along e + GROWN_NOISE g / sqrt(D) (g standard normal: cosine about 0.9 to e), text suffixed with its copy number.
    Sample i has caption i and the image of source sample i mod U. So the corpus's cluster structure is kept, each
    cluster grown n / U times. Written part by part (parts of GROWN_PART); reused when complete."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from xclr_schemas import CAPTIONS_SCHEMA, SAMPLES_SCHEMA, EmbeddingRows, part_paths, read_captions, read_samples

    if (out / MANIFEST).exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    manifest = json.loads((source / MANIFEST).read_text())
    rows = EmbeddingRows(source, manifest)
    texts, samples = read_captions(source, manifest), read_samples(source, manifest)
    if samples.num_rows != rows.n or not np.array_equal(samples.column("caption_id").to_numpy(), np.arange(rows.n)):
        raise SystemExit(f"{source}: growing needs one sample per caption, in caption order")
    rng = np.random.default_rng(0)
    parts = []
    for p, start in enumerate(range(0, n, GROWN_PART)):
        ids = np.arange(start, min(n, start + GROWN_PART))
        base = ids % rows.n
        e = rows.take(base)
        copy = ids >= rows.n
        e[copy] += GROWN_NOISE * rng.standard_normal((int(copy.sum()), rows.dim), dtype=np.float32) / rows.dim**0.5
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        suffix = pa.array(np.where(copy, np.char.add(" #", (ids // rows.n).astype(str)), ""))
        files = part_paths(out, p)
        for f in files.values():
            f.parent.mkdir(parents=True, exist_ok=True)
        np.save(files["embeddings"], e.astype(np.float16))
        pq.write_table(pa.table({"caption_id": ids, "text": pc.binary_join_element_wise(
            texts.take(pa.array(base)), suffix, "")}, schema=CAPTIONS_SCHEMA), files["captions"])
        source_rows = samples.take(pa.array(base))
        pq.write_table(pa.table({"key": [f"g{i:09d}" for i in ids], "caption_id": ids,
                                 **{c: source_rows.column(c) for c in ("image_source", "image_member", "image_row",
                                                                         "label")}}, schema=SAMPLES_SCHEMA),
                       files["samples"])
        files["done"].write_text("{}")
        parts.append({"index": p, "samples": len(ids), "caption_start": int(ids[0]), "caption_end": int(ids[-1]) + 1})
    grown = {**manifest, "counts": {**manifest["counts"], "unique_captions": n, "kept": n, "input_rows": n},
             "parts": parts, "grown_from": {"path": str(source), "captions": rows.n, "noise": GROWN_NOISE}}
    (out / MANIFEST).write_text(json.dumps(grown, indent=2))
    return out


def measure_graph(root: Path, n: int, index: str = "auto", embed_dir: Path | None = None) -> dict:
    """`xclr-prep graph` of root/embed-N (or `embed_dir`), with the figures the model and the checks use."""
    name = f"graph-{n}" if index == "auto" else f"graph-{index}-{n}"
    out = root / name.replace("graph", "shards")

    def measure() -> dict:
        nonlocal embed_dir
        embed_dir = embed_dir or root / f"embed-{n}"
        run = run_measured([str(BIN / "xclr-prep"), "graph", str(embed_dir), "--out", str(out), "--index", index,
                            "--shard-samples", "1000", "--no-progress"], marker=out / GRAPH / MANIFEST)
        shards = json.loads((out / MANIFEST).read_text())
        graph = json.loads((out / GRAPH / MANIFEST).read_text())
        timing = shards["run"]
        return {**run, "n": n, "captions": graph["captions"], "method": graph["method"], "index": graph.get("index"),
                "search_seconds": graph["run"]["seconds"],
                "shards_seconds": timing["locate_seconds"] + timing["layout_seconds"] + timing["write_seconds"],
                "layout_seconds": timing["layout_seconds"],
                "locate_write_seconds": timing["locate_seconds"] + timing["write_seconds"],
                "writers": timing["workers"], "recall": graph["recall"]["measured"],
                "graph_disk_bytes": dir_bytes(out / GRAPH), "shards_disk_bytes": dir_bytes(out, out / GRAPH),
                "layout_disk_bytes": dir_bytes(out / LAYOUT), "samples": shards["counts"]["written"],
                "engines": graph["engines"]}

    return cached(root, name, [out], measure)


def measure_train(root: Path, name: str, shards: Path, args: list[str]) -> dict:
    out = root / f"train-{name}"

    def measure() -> dict:
        run = run_measured([str(BIN / "xclr-train"), "--data", str(shards), "--out", str(out), *args])
        lines = [json.loads(x) for x in (out / METRICS).read_text().splitlines() if x.strip()]
        return {**run, "args": args, "disk_bytes": dir_bytes(out),
                "checkpoint_bytes": (out / CHECKPOINTS / LATEST).stat().st_size,
                "median_step_seconds": float(np.median([x["step_time"] for x in lines])),
                "median_data_seconds": float(np.median([x["data_time"] for x in lines]))}

    return cached(root, f"train-{name}", [out], measure)


def train_steps_args(steps: int) -> list[str]:
    return [*TRAIN_ARGS, "--steps", str(steps), "--samples-per-epoch", str(steps * TRAIN_BATCH)]


def gemm_rate(root: Path) -> dict:
    """float32 FLOP/s of numpy's matmul of the exact search's block shape (BLOCK x D @ D x 65536), best of 3."""
    path = root / "results" / "gemm.json"
    if path.exists():
        return json.loads(path.read_text())
    busy = wait_quiet()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((BLOCK, DIM), dtype=np.float32)
    b = rng.standard_normal((DIM, 65_536), dtype=np.float32)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    result = {"flops": 2 * BLOCK * DIM * 65_536 / best, "cores": os.cpu_count(), "busy_before": busy}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def ivf_query_costs(root: Path, n0: int) -> dict:
    """Seconds per query of the CPU IVF index as the graph stage builds it, on the first U0 / 4 and all U0 captions
    of root/embed-U0 (so that the vectors per list differ), each searched at nprobe in nlist / (64, 16, 4, 1) times
    each of REFINE_FACTORS (best of 2); and the least-squares fit q = q0 + q_p nprobe + q_c codes + q_r candidates
    (lists probed, codes = nprobe U / nlist scanned, candidates = refine (k + 1) re-ranked). Cached in
    ROOT/results/ivf-queries-U0.json."""
    path = root / "results" / f"ivf-queries-{n0}.json"
    if path.exists():
        return json.loads(path.read_text())
    busy = wait_quiet()
    rows = EmbeddingRows(root / f"embed-{n0}")
    queries = rows.take(np.sort(np.random.default_rng(0).choice(rows.n, IVF_GRID_QUERIES, replace=False)))
    grid = []
    for n in (rows.n // 4, rows.n):
        index = knn.build_index(rows, np.arange(n), knn.index_recipe("ivf", n, rows.dim, "faiss-cpu"), seed=0)
        nlist = knn.nlist(index)
        for nprobe in (nlist // 64, nlist // 16, nlist // 4, nlist):
            for refine in REFINE_FACTORS:
                knn.set_search_parameter(index, "ivf", knn.SearchParams(nprobe, refine))
                best = float("inf")
                for _ in range(2):
                    t = time.perf_counter()
                    index.search(queries, K_NEIGHBORS + 1)
                    best = min(best, time.perf_counter() - t)
                grid.append({"n": n, "nlist": nlist, "nprobe": nprobe, "refine": refine, "codes": nprobe * n / nlist,
                             "candidates": refine * (K_NEIGHBORS + 1), "seconds": best / len(queries)})
    design = np.array([[1.0, g["nprobe"], g["codes"], g["candidates"]] for g in grid])
    seconds = np.array([g["seconds"] for g in grid])
    coef, *_ = np.linalg.lstsq(design, seconds, rcond=None)
    result = {"queries": IVF_GRID_QUERIES, "busy_before": busy, "grid": grid,
              "fit": dict(zip(("q0", "per_list", "per_code", "per_candidate"), map(float, coef))),
              "max_abs_rel_residual": float(np.max(np.abs(design @ coef - seconds) / seconds))}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------------------------------- the model

def fit(xs: list[float], ys: list[float]) -> dict:
    """y = a + b x through two points; b < 0 (noise) becomes b = 0, a = mean(y)."""
    (x1, x2), (y1, y2) = xs, ys
    b = (y2 - y1) / (x2 - x1)
    if b < 0:
        return {"a": (y1 + y2) / 2, "b": 0.0}
    return {"a": y1 - b * x1, "b": b}


def constant(ys: list[float]) -> dict:
    return {"a": float(np.mean(ys)), "b": 0.0}


def at(line: dict, x: float, scale: float = 1.0) -> float:
    return line["a"] + line["b"] * x * scale


def peak(run: dict, phase: str, name: str = "total") -> float:
    return run["peaks"][phase][name]


def memory_terms(stage: str, n: float, u: float, c: dict, actors: int = 1, method: str = "exact") -> dict:
    """The memory of a stage that grows with N (module docstring): `anon` bytes, and `mapped`: (bytes, readers) of
    each file memory-mapped and read whole by `readers` processes (counted once per process in RSS). `c`: the
    calibrated per-sample bytes of the writers' row files (`row_bytes`); `actors`: shard writers."""
    if stage == "embed":
        return {"anon": DEDUP_BYTES * n, "mapped": []}
    if stage == "graph search":
        index = index_bytes(method, int(u), DIM) if method in ("ivf", "hnsw") else 0
        return {"anon": min(u, VALIDITY_BLOCK) * DIM * 9 + index, "mapped": [(u * DIM * 2, 2)]}
    return {"anon": LAYOUT_BYTES * n,  # shard writing
            "mapped": [(u * K_NEIGHBORS * 12, 1 + actors), (u * DIM * 2, 1), (c["row_bytes"] * n, actors)]}


def rss_terms(terms: dict) -> float:
    return terms["anon"] + sum(size * readers for size, readers in terms["mapped"])


def mapped_bytes(terms: dict) -> float:
    return sum(size for size, _ in terms["mapped"])


def exact_seconds(queries: float, u: float, flops: float) -> float:
    """Exact search of `queries` against U captions at `flops` FLOP/s: 2 D flops per pair."""
    return queries * u * 2 * DIM / flops


def ivf_build_flops(u: float) -> float:
    """2 D B(U) of the module docstring: the k-means and assignment GEMMs of building the IVF index."""
    return 2 * DIM * (640 * ivf_lists(int(u)) + u) * ivf_lists(int(u))


def ivf_query_seconds(v: dict, u: float) -> float:
    """q(U) of the module docstring: one IVF query over U vectors at the nprobe and refine tuned at U0."""
    q = v["query_fit"]
    return (q["q0"] + q["per_list"] * v["nprobe"] + q["per_code"] * v["nprobe"] * u / ivf_lists(int(u))
            + q["per_candidate"] * v["refine"] * (K_NEIGHBORS + 1))


def calibrate(embeds: list[dict], graphs: list[dict], trains: list[dict], checkpoint: dict, gemm: dict,
              ivf: dict, ivf_queries: dict) -> dict:
    """Every coefficient of the model (module docstring) from the calibration runs, the `--index ivf` run `ivf`,
    the IVF query costs `ivf_queries` (ivf_query_costs) and the stored figures."""
    ns = [r["n"] for r in embeds]
    us = [r["captions"] for r in graphs]
    graph_json = json.loads((RESULTS / "graph.json").read_text())
    eta = graph_json["exact"]["fraction_of_gemm"]
    flops = eta * gemm["flops"]
    u_per_n = embeds[-1]["unique_captions"] / embeds[-1]["n"]
    per_sample = {"row_bytes": fit(ns, [r["layout_disk_bytes"] for r in graphs])["b"]}  # the writers' mapped rows

    def memory(stage: str, runs: list[dict], phase: str) -> dict:
        actors = [peak(r, phase, "n_actors") for r in runs]
        base = [peak(r, phase) - rss_terms(memory_terms(stage, n, u, per_sample, a))
                for r, n, u, a in zip(runs, ns, us, actors)]
        return {"base": float(np.mean(base)), "actors": max(actors),
                "per_actor": float(np.mean([peak(r, phase, "actors") / max(1, a) for r, a in zip(runs, actors)]))}

    hnsw = graph_json["hnsw"]
    search_other = constant([r["search_seconds"] - exact_seconds(u + RECALL_QUERIES, u, flops)
                             for r, u in zip(graphs, us)])
    v, u0 = ivf["index"], ivf["captions"]
    ivf_recall = exact_seconds(RECALL_QUERIES, u0, flops)
    return {
        "cores": embeds[0]["cores"],
        "unique_fraction": u_per_n,
        **per_sample,
        "embed": {"seconds": fit(ns, [r["wall_seconds"] for r in embeds]),
                  "memory": memory("embed", embeds, "all"), "disk": fit(ns, [r["disk_bytes"] for r in embeds])},
        "search": {
            "other_seconds": constant([r["wall_seconds"] - r["search_seconds"] - r["shards_seconds"] for r in graphs]),
            "seconds": search_other,
            "gemm_flops": gemm["flops"], "eta": eta,
            "hnsw": {"n0": hnsw["n"], "build_seconds": hnsw["build_seconds"], "tune_seconds": hnsw["tune_seconds"],
                     "query_seconds": hnsw["seconds"] - hnsw["build_seconds"] - hnsw["tune_seconds"]},
            "ivf": {"n0": u0, "nprobe": v["value"], "nlist": v["nlist"], "refine": v["refine"],
                    "build_rest_seconds": v["build_seconds"] - ivf_build_flops(u0) / gemm["flops"],
                    "tune_search_seconds": v["tune_seconds"] - exact_seconds(TUNING_QUERIES, u0, flops),
                    "query_seconds": ivf["search_seconds"] - search_other["a"] - ivf_recall - v["build_seconds"]
                    - v["tune_seconds"], "query_fit": ivf_queries["fit"]},
            "memory": memory("graph search", graphs, "before"),
            "disk": fit(us, [r["graph_disk_bytes"] for r in graphs])},
        "shards": {"layout_seconds": fit(ns, [r["layout_seconds"] for r in graphs]),
                   "locate_write_seconds": fit(ns, [r["locate_write_seconds"] for r in graphs]),
                   "memory": memory("shard writing", graphs, "after"),
                   "disk": fit(ns, [r["shards_disk_bytes"] for r in graphs])},
        "train": {"seconds": fit([r["steps"] for r in trains], [r["wall_seconds"] for r in trains]),
                  "memory": {"base": float(np.mean([peak(r, "all") for r in trains]))},
                  "disk": float(np.mean([r["disk_bytes"] for r in trains])),
                  "resnet50_checkpoint_bytes": checkpoint["checkpoint_bytes"]},
    }


def gpu_training() -> dict:
    """The ResNet-50 figures of the earlier H100 run (benchmarks/results/train_gpu_h100.json)."""
    h100 = json.loads((RESULTS / "train_gpu_h100.json").read_text())
    best = max(h100["pipeline"]["runs"], key=lambda r: r["workers"])
    return {"source": "benchmarks/results/train_gpu_h100.json (earlier H100 run)", "device": h100["device"],
            "model_samples_per_s": h100["step"]["samples_per_s"], "arch": h100["step"]["arch"],
            "image_size": h100["step"]["image_size"], "batch_size": h100["step"]["batch_size"],
            "loader_samples_per_s_per_worker": best["samples_per_s_per_worker"],
            "loader_workers_measured": best["workers"]}


def search_method(n_unique: float, node_bytes: float) -> str:
    """What `--index auto` picks on CPUs (graph_stage._resolve_method)."""
    if n_unique <= EXACT_MAX_CPU:
        return "exact"
    return "ivf" if index_bytes("ivf", int(n_unique), DIM) <= node_bytes / 2 else "exact"


def node_memory(c: dict, stage: str, cl: Cluster, n: float, u: float, actors: int, method: str = "exact") -> dict:
    """Peak memory of the head node (the driver's, the busiest): `rss` as this machine's RSS sums count it (mapped
    files once per reading process), `resident` with mapped files once (page cache), and `mapped` alone."""
    m = c[COEFFICIENTS[stage]]["memory"]
    terms = memory_terms(stage, n, u, c, actors, method)
    base = m["base"] + (actors - m.get("actors", actors)) * m.get("per_actor", 0.0)
    return {"rss": base + rss_terms(terms), "resident": base + terms["anon"] + mapped_bytes(terms),
            "mapped": mapped_bytes(terms)}


def predict(c: dict, cl: Cluster, n: int, train_steps: int | None = None, method: str | None = None) -> dict:
    """Wall seconds, peak memory of the head node (bytes; see node_memory) and disk (bytes) of each stage for `n`
    captions on `cl`. `train_steps`: CPU training steps (default: one epoch, n / 128). `method`: force a search."""
    cores = cl.nodes * cl.cores
    s = c["cores"] / cores  # per-core scale
    node = c["cores"] / cl.cores  # work on one node
    u = n * c["unique_fraction"]
    out: dict = {}

    e = c["embed"]
    out["embed"] = {"seconds": at(e["seconds"], n, s), "disk": at(e["disk"], n),
                    **node_memory(c, "embed", cl, n, u, math.ceil(cl.cores / 8))}

    g = c["search"]
    method = method or search_method(u, cl.memory_gib * 2**30)
    exact_flops = g["eta"] * g["gemm_flops"]
    seconds = at(g["other_seconds"], n) + at(g["seconds"], u) + exact_seconds(RECALL_QUERIES, u, exact_flops) * node
    disk = at(g["disk"], u)
    if method == "exact":
        seconds += exact_seconds(u, u, exact_flops) * s
    elif method == "hnsw":
        h = g["hnsw"]
        growth = u * math.log2(u) / (h["n0"] * math.log2(h["n0"]))
        seconds += (h["build_seconds"] + h["tune_seconds"]) * growth * node + h["query_seconds"] * growth * s
        disk += index_bytes("hnsw", int(u), DIM)
    else:
        v = g["ivf"]
        growth = ivf_query_seconds(v, u) / ivf_query_seconds(v, v["n0"])
        build = v["build_rest_seconds"] + ivf_build_flops(u) / g["gemm_flops"]
        tune = exact_seconds(TUNING_QUERIES, u, exact_flops) + v["tune_search_seconds"] * growth
        seconds += (build + tune) * node + v["query_seconds"] * u / v["n0"] * growth * s
        disk += index_bytes("ivf", int(u), DIM)
    out["graph search"] = {"seconds": seconds, "disk": disk, "method": method,
                           **node_memory(c, "graph search", cl, n, u, 1, method)}

    sh = c["shards"]
    out["shard writing"] = {"seconds": at(sh["layout_seconds"], n) + at(sh["locate_write_seconds"], n, s),
                            "disk": at(sh["disk"], n), **node_memory(c, "shard writing", cl, n, u, cl.cores)}

    t = c["train"]
    steps = train_steps if train_steps is not None else n / TRAIN_BATCH
    ranks = cores / c["cores"]
    per_node = t["memory"]["base"] * cl.cores / c["cores"]
    out["train"] = {"seconds": at(t["seconds"], steps / ranks), "rss": per_node, "resident": per_node, "mapped": 0.0,
                    "disk": t["disk"], "steps": steps, "ranks": ranks}
    return out


def predict_gpu_training(cl: Cluster, n: int, gpu: dict, checkpoint_bytes: int) -> dict:
    """One epoch of n samples of ResNet-50 at 224 px on the GPU nodes of `cl` (module docstring)."""
    gpus = cl.gpu_nodes * cl.gpus_per_node
    model = gpus * gpu["model_samples_per_s"]
    loader = gpus * cl.loader_workers_per_gpu * gpu["loader_samples_per_s_per_worker"]
    return {"seconds": n / min(model, loader), "bound": "input pipeline" if loader < model else "model",
            "model_samples_per_s": model, "loader_samples_per_s": loader, "disk": 2 * checkpoint_bytes,
            "resident": None}


# ----------------------------------------------------------------------------------------------------- checking

def measured_rows(n: int, embed: dict, graph: dict, train: dict) -> dict:
    """The measured counterpart of each stage's prediction."""
    return {
        "embed": {"seconds": embed["wall_seconds"], "memory": peak(embed, "all"), "disk": embed["disk_bytes"],
                  "others_cpu": embed["others_cpu"]},
        "graph search": graph_search_row(graph),
        "shard writing": shard_writing_row(graph),
        "train": {"seconds": train["wall_seconds"], "memory": peak(train, "all"), "disk": train["disk_bytes"],
                  "others_cpu": train["others_cpu"]},
    }


def shard_writing_row(graph: dict) -> dict:
    return {"seconds": graph["shards_seconds"], "memory": peak(graph, "after"), "disk": graph["shards_disk_bytes"],
            "others_cpu": graph["others_cpu"]}


def graph_search_row(graph: dict) -> dict:
    return {"seconds": graph["wall_seconds"] - graph["shards_seconds"], "memory": peak(graph, "before"),
            "disk": graph["graph_disk_bytes"], "others_cpu": graph["others_cpu"]}


def compare(n: int, stage: str, predicted: dict, measured: dict) -> list[dict]:
    """Predicted against measured time, memory (RSS as measured: mapped files once per reading process), disk."""
    got = {"seconds": predicted["seconds"], "memory": predicted["rss"], "disk": predicted["disk"]}
    return [{"n": n, "stage": stage, "metric": metric, "predicted": got[metric], "measured": measured[metric],
             "rel_error": (got[metric] - measured[metric]) / measured[metric], "others_cpu": measured["others_cpu"]}
            for metric in got]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = {"seconds": ("wall time", "s", 1), "memory": ("peak memory (process tree RSS)", "MiB", 2**20),
             "disk": ("disk", "MiB", 2**20)}
    stages = sorted({r["stage"] for r in rows}, key=lambda s: (s.startswith("graph search ("), s))
    colors = dict(zip(stages, plt.get_cmap("tab10").colors))
    markers = dict(zip(sorted({r["n"] for r in rows}), "osD^v"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.4))
    for ax, (metric, (title, unit, div)) in zip(axes, units.items()):
        got = [r for r in rows if r["metric"] == metric]
        vals = [v / div for r in got for v in (r["predicted"], r["measured"])]
        lo, hi = min(vals) / 1.5, max(vals) * 1.5
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        for f in (0.75, 1.25):
            ax.plot([lo, hi], [lo * f, hi * f], color="grey", lw=0.6, ls=":")
        for r in got:
            contended = r["others_cpu"] > CONTENDED
            ax.scatter(r["measured"] / div, r["predicted"] / div, marker=markers[r["n"]], s=45,
                       facecolor="none" if contended else colors[r["stage"]],
                       edgecolor=colors[r["stage"]] if contended else "black", linewidth=1.2 if contended else 0.4)
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), title=title,
               xlabel=f"measured ({unit})", ylabel=f"predicted ({unit})")
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    handles = [plt.Line2D([], [], color=colors[s], marker="o", ls="", label=s) for s in stages]
    handles += [plt.Line2D([], [], color="grey", marker=m, ls="", label=f"{n:,} captions") for n, m in markers.items()]
    handles += [plt.Line2D([], [], color="grey", ls=":", label="+-25%"),
                plt.Line2D([], [], color="grey", marker="o", mfc="none", ls="",
                           label=f"hollow: others used > {100 * CONTENDED:.0f}% of the CPU")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Cost model: predicted (calibrated at 2k/20k captions) vs measured, this machine", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def process_rows(root: Path, sizes: list[int]) -> list[dict]:
    """Per measured run at `sizes`: the peaks of the driver (RSS and anonymous) and of the largest actor of each
    kind, by phase, from the cached results."""
    out = []
    for n in sizes:
        for name, stage, phase in ((f"embed-{n}", "embed", "all"), (f"graph-{n}", "graph search", "before"),
                                   (f"graph-{n}", "shard writing", "after")):
            path = root / "results" / f"{name}.json"
            if not path.exists():
                continue
            got = json.loads(path.read_text())["peaks"][phase]
            out.append({"n": n, "stage": stage, "driver": got["driver"], "driver_anon": got["driver_anon"],
                        **{kind: got[f"one_{kind}"] for kind in ACTORS if got[f"one_{kind}"]}})
    return out


def process_table(rows: list[dict]) -> str:
    lines = ["| stage | N | driver RSS | driver anonymous | largest actor | driver anonymous per sample, from the "
             "previous size |", "|---|---:|---:|---:|---:|---:|"]
    previous: dict[str, dict] = {}
    for r in rows:
        actor = next(((k, v) for k, v in r.items() if k in ACTORS), None)
        before = previous.get(r["stage"])
        slope = (f"{(r['driver_anon'] - before['driver_anon']) / (r['n'] - before['n']):.0f} B" if before else "")
        lines.append(f"| {r['stage']} | {r['n']:,} | {human_bytes(r['driver'])} | {human_bytes(r['driver_anon'])} "
                     f"| {f'{actor[0]} {human_bytes(actor[1])}' if actor else ''} | {slope} |")
        previous[r["stage"]] = r
    return "\n".join(lines)


def plot_scale(c: dict, this: Cluster, rows: list[dict], path: Path) -> None:
    """Time and memory against N on this machine: the model's curve per stage (auto search method; training
    min(N / 1000, CHECK_MAX_STEPS) steps) and the measured runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ["embed", "graph search", "shard writing", "train"]
    colors = dict(zip(stages, plt.get_cmap("tab10").colors))
    grid = np.geomspace(2_000, max(r["n"] for r in rows) * 1.5, 60)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (metric, key, div, label) in zip(axes, (("seconds", "seconds", 1, "wall time (s)"),
                                                   ("memory", "rss", 2**30, "peak memory, process tree RSS (GiB)"))):
        for stage in stages:
            curve = [predict(c, this, int(n), train_steps=min(max(1, int(n) // 1000), CHECK_MAX_STEPS))[stage][key]
                     for n in grid]
            ax.plot(grid, np.array(curve, dtype=float) / div, color=colors[stage], lw=1.2, label=f"{stage} (model)")
            got = [r for r in rows if r["stage"] == stage and r["metric"] == metric]
            ax.scatter([r["n"] for r in got], [r["measured"] / div for r in got], color=colors[stage], s=30,
                       edgecolor="black", linewidth=0.5, zorder=3)
        ax.set(xscale="log", yscale="log", xlabel="captions N (one sample each)", ylabel=label)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle("Each stage against N on this machine (2 cores): model (lines) and measured runs (dots); graph search "
                 "is exact up to 250k captions, IVF above", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------- reporting

def human_seconds(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0f} s" if x < 120 else f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.1f} h"


def human_bytes(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x / 2**20:.0f} MiB" if x < 2**30 else f"{x / 2**30:.1f} GiB"


def check_table(rows: list[dict]) -> str:
    lines = ["| stage | N | time pred | time meas | err | memory pred | memory meas | err | disk pred | disk meas "
             "| err | others' CPU |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keyed = {(r["stage"], r["n"], r["metric"]): r for r in rows}
    for stage, n in dict.fromkeys((r["stage"], r["n"]) for r in rows):
        cells = []
        for metric, fmt in (("seconds", lambda x: f"{x:.1f} s"), ("memory", human_bytes), ("disk", human_bytes)):
            r = keyed[(stage, n, metric)]
            cells += [fmt(r["predicted"]), fmt(r["measured"]), f"{100 * r['rel_error']:+.0f}%"]
        cells.append(f"{100 * keyed[(stage, n, 'seconds')]['others_cpu']:.0f}%")
        lines.append(f"| {stage} | {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prediction_table(predictions: list[dict], sizes: list[int]) -> str:
    head = "| stage | where | " + " | ".join(f"{n / 1e6:g}M time | memory/node | disk" for n in sizes) + " |"
    lines = [head, "|---|---|" + "---:|" * (3 * len(sizes))]
    by_n = {p["n"]: p for p in predictions}
    where = {"embed": "CPU nodes", "graph search": "CPU nodes", "shard writing": "CPU nodes",
             "train": "CPU nodes (32 px convnet)", "graph search (exact)": "CPU nodes",
             "train (GPU)": "GPU nodes (ResNet-50, 224 px)"}
    for stage in (*STAGES[:2], "graph search (exact)", STAGES[2], STAGES[3], "train (GPU)"):
        cells = []
        for n in sizes:
            p = by_n[n]["stages"][stage]
            label = human_seconds(p["seconds"])
            if "method" in p:
                label += f" ({p['method']})"
            if "bound" in p:
                label += f" ({p['bound']}-bound)"
            memory = "not measured" if stage == "train (GPU)" else human_bytes(p["resident"])
            if p.get("mapped"):
                memory += f" ({human_bytes(p['mapped'])} mapped)"
            cells += [label, memory, human_bytes(p["disk"])]
        lines.append(f"| {stage} | {where[stage]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("runs/cost"), help="scratch data and cached measurements")
    ap.add_argument("--out", type=Path, default=RESULTS, help="cost_model.json, cost_model.md, cost-plots/")
    ap.add_argument("--calibration", type=int, nargs=2, default=[2000, 20_000], help="calibration sizes")
    ap.add_argument("--train-steps", type=int, nargs=2, default=[5, 25], help="calibration training steps")
    ap.add_argument("--check", type=int, nargs="+", default=[10_000, 30_000, 100_000, 1_000_000],
                    help="check sizes (every stage)")
    ap.add_argument("--grow", type=int, nargs="*", default=[3_000_000],
                    help="graph-only check sizes, on the largest check's embeddings grown (write_grown_embed_dir)")
    ap.add_argument("--predict", type=int, nargs="+", default=[1_000_000, 3_000_000, 12_000_000])
    ap.add_argument("--nodes", type=int, default=8, help="CPU nodes of the stated cluster")
    ap.add_argument("--cores", type=int, default=32, help="cores per CPU node")
    ap.add_argument("--memory-gib", type=float, default=128, help="memory per CPU node")
    ap.add_argument("--gpu-nodes", type=int, default=4)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--loader-workers-per-gpu", type=int, default=16)
    ap.add_argument("--image-bytes", type=float, default=None,
                    help="mean image bytes per sample for the cluster's disk [default: this corpus' mean]")
    args = ap.parse_args()
    root = args.root.resolve()

    # --- measure: calibration, then the checks
    gemm = gemm_rate(root)
    embeds = [measure_embed(root, n) for n in args.calibration]
    graphs = [measure_graph(root, n) for n in args.calibration]
    shards_cal = root / f"shards-{args.calibration[-1]}"
    trains = [{**measure_train(root, f"steps-{s}", shards_cal, train_steps_args(s)), "steps": s}
              for s in args.train_steps]
    checkpoint = measure_train(root, "resnet50-checkpoint", shards_cal, CHECKPOINT_ARGS)
    approx_n = max(n for n in args.check if n <= EXACT_MAX_CPU)  # above, auto picks IVF
    coeffs = calibrate(embeds, graphs, trains, checkpoint, gemm, measure_graph(root, approx_n, "ivf"),
                       ivf_query_costs(root, approx_n))

    this = Cluster(f"this machine ({os.cpu_count()} cores, shared)", 1, os.cpu_count(),
                   psutil.virtual_memory().total / 2**30)
    rows, check_runs = [], {}
    for n in args.check:
        embed, graph = measure_embed(root, n), measure_graph(root, n)
        steps = min(max(1, n // 1000), CHECK_MAX_STEPS)
        train = measure_train(root, f"n{n}", root / f"shards-{n}", train_steps_args(steps))
        predicted = predict(coeffs, this, n, train_steps=steps)
        check_runs[n] = {"embed": embed["name"], "graph": graph["name"], "train": train["name"], "train_steps": steps}
        for stage, measured in measured_rows(n, embed, graph, train).items():
            rows += compare(n, stage, predicted[stage], measured)
    hnsw = measure_graph(root, approx_n, "hnsw")
    predicted = predict(coeffs, this, approx_n, method="hnsw")["graph search"]
    rows += compare(approx_n, "graph search (hnsw)", predicted, graph_search_row(hnsw))
    for n in args.grow:
        grown = write_grown_embed_dir(root / f"embed-{args.check[-1]}", root / f"embed-grown-{n}", n)
        graph = measure_graph(root, n, embed_dir=grown)
        check_runs[n] = {"graph": graph["name"], "grown_from": args.check[-1]}
        predicted = predict(coeffs, this, n)
        rows += compare(n, "graph search", predicted["graph search"], graph_search_row(graph))
        rows += compare(n, "shard writing", predicted["shard writing"], shard_writing_row(graph))

    # --- predict at scale on the stated cluster
    cluster = Cluster(f"{args.nodes} CPU nodes x {args.cores} cores, {args.memory_gib:g} GiB each; "
                      f"{args.gpu_nodes} GPU nodes x {args.gpus_per_node} H100, "
                      f"{args.loader_workers_per_gpu} DataLoader workers per GPU",
                      args.nodes, args.cores, args.memory_gib, args.gpu_nodes, args.gpus_per_node,
                      args.loader_workers_per_gpu)
    image_bytes = mean_image_bytes()
    scale_coeffs = coeffs
    if args.image_bytes is not None:
        disk = coeffs["shards"]["disk"]
        scale_coeffs = {**coeffs, "shards": {**coeffs["shards"],
                                             "disk": {"a": disk["a"], "b": disk["b"] - image_bytes + args.image_bytes}}}
    gpu = gpu_training()
    predictions = []
    for n in args.predict:
        stages = predict(scale_coeffs, cluster, n)
        stages["graph search (exact)"] = predict(scale_coeffs, cluster, n, method="exact")["graph search"]
        stages["train (GPU)"] = predict_gpu_training(cluster, n, gpu, coeffs["train"]["resnet50_checkpoint_bytes"])
        predictions.append({"n": n, "stages": stages})
    this_machine = [{"n": n, "stages": predict(coeffs, this, n)} for n in args.predict]

    errors = {m: float(np.median([abs(r["rel_error"]) for r in rows if r["metric"] == m]))
              for m in ("seconds", "memory", "disk")}
    errors_by_n = {n: {m: float(np.median([abs(r["rel_error"]) for r in rows if r["metric"] == m and r["n"] == n]))
                       for m in ("seconds", "memory")} for n in dict.fromkeys(r["n"] for r in rows)}
    processes = process_rows(root, [*args.check, *args.grow])
    result = {
        "command": "HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 .venv/bin/python benchmarks/cost_model.py",
        "machine": this.name, "calibration_sizes": args.calibration, "calibration_train_steps": args.train_steps,
        "corpus": "scene captions (xclr_prep.scene_captions, seed 0), each with a Fashion-MNIST PNG (cycled, "
                  f"{image_bytes / 1e3:.2f} KB mean), img2dataset-style tars of {PER_TAR}; --shard-samples 1000",
        "training_measured": f"CPU: {' '.join(TRAIN_ARGS)}; check runs train min(N/1000, {CHECK_MAX_STEPS}) steps",
        "coefficients": coeffs, "gpu_training": gpu, "check_runs": check_runs, "check": rows,
        "median_abs_rel_error": errors, "median_abs_rel_error_by_n": errors_by_n, "processes": processes,
        "cluster": asdict(cluster),
        "image_bytes_at_scale": args.image_bytes or image_bytes, "predictions": predictions,
        "predictions_this_machine": this_machine,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost_model.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out / "cost-plots" / "predicted-vs-measured.png")
    plot_scale(coeffs, this, rows, args.out / "cost-plots" / "scale.png")
    md = (f"## Check on {this.name}\n\nCalibrated at {args.calibration[0]:,} and {args.calibration[1]:,} captions "
          f"(training: {args.train_steps[0]} and {args.train_steps[1]} steps); train rows run min(N / 1000, "
          f"{CHECK_MAX_STEPS}) steps; the {', '.join(f'{n:,}' for n in args.grow)} rows are graph-only runs on grown "
          f"embeddings. "
          f"Memory = peak summed RSS of the process tree; others' CPU = share of the machine other users took during "
          f"the run.\n\n{check_table(rows)}\n\nmedian |error|: time {100 * errors['seconds']:.0f}%, "
          f"memory {100 * errors['memory']:.0f}%, disk {100 * errors['disk']:.0f}%; by N: "
          + ", ".join(f"{n:,}: time {100 * e['seconds']:.0f}%, memory {100 * e['memory']:.0f}%"
                      for n, e in errors_by_n.items())
          + f"\n\n## Memory by process\n\nPeaks of each run; the driver's anonymous memory leaves out the files it "
          f"maps (neighbour rows, embeddings).\n\n{process_table(processes)}\n\n"
          f"## Predictions: {cluster.name}\n\nOne epoch of training; memory/node = the head node's peak (it runs "
          f"the driver), memory-mapped files (page cache) counted once and shown in brackets; shard disk at "
          f"{result['image_bytes_at_scale'] / 1e3:.1f} KB per image. CPU figures: per-core costs measured here, "
          f"scaled linearly; GPU training: {gpu['source']}.\n\n{prediction_table(predictions, args.predict)}\n")
    (args.out / "cost_model.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
