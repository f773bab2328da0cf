"""Cost model of the pipeline: wall time, peak memory and disk of every stage, calibrated on small runs of the real
commands, checked against measured runs (by default at 10k, 30k, 100k and 1M captions and a graph-only run at 3M;
`--check`, `--grow`), and extrapolated to 1M, 3M (CC3M) and 12M (CC12M) captions on a stated cluster.

    HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 .venv/bin/python benchmarks/cost_model.py

This script measures and reports; the model is cost_predict (its docstring gives every formula), fitted by
cost_fit, checked and written out by cost_report.

Measuring. Every measurement is a run of the command a user types (`xclr-prep embed`, `xclr-prep graph`,
`xclr-train`) in its own process, started once the shared machine is quiet (harness.wait_quiet), measured by
harness.run_measured (wall time, peak RSS of the process tree by role and phase, the driver's anonymous RSS, the
CPU share others took) with the phases of `graph` before / after graph/manifest.json exists, plus the bytes of the
files the stage leaves. Its result is cached in ROOT/results/NAME.json (delete one to measure it again), so an
interrupted run resumes; a contended run is measured again (harness.least_contended).

Corpus. The scene captions of `xclr_prep.scene_captions` (seed 0: unique, so U = N), each with Fashion-MNIST image
i mod 70,000 (PNG; images repeat, their mean size is in cost_model.json), img2dataset-style tars of 1000 samples
(KEY.png, KEY.txt): every size draws from the same distribution and a smaller corpus is a prefix of a larger one.
A graph-only check (`--grow`, 3M by default) runs on the largest check's embeddings grown to its size
(`write_grown_embed_dir`: noisy copies, the cluster structure kept). The graph stage runs with --shard-samples 1000 (so
that the small runs have a shard per writer); training uses the quality study's CPU set-up (32 px convnet, batch 128,
AdamW, one DataLoader worker).

Calibration at 2k and 20k captions (5 and 25 training steps): the larger size exceeds ENCODE_CHUNK (16,384): the embed
stage sorts each chunk of captions by length before batching them, and a corpus smaller than one chunk pads more per
caption than a large one does. IVF is calibrated by an `--index ivf` run at U0 (the largest check size up to
EXACT_MAX_CPU: 100k by default) and the query costs of IVF indexes on U0 / 4 and U0 captions (ivf_query_costs, cached in
ROOT/results/ivf-queries-U0.json). The check runs the same commands at every `--check` size (training:
cost_report.check_steps: partial epochs), plus `--index hnsw` at U0 and the graph-only runs, and reports (predicted -
measured) / measured. Outputs: OUT/cost_model.json, OUT/cost_model.md and
OUT/cost-plots/{predicted-vs-measured,scale}.png.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil
from cost_fit import CalibrationRuns, calibrate, gpu_training
from cost_predict import (
    DIM,
    K_NEIGHBORS,
    TRAIN_BATCH,
    Cluster,
    Coefficients,
    predict,
    predict_cluster,
    with_image_bytes,
)
from cost_report import (
    CHECK_MAX_STEPS,
    check_steps,
    compare,
    graph_search_row,
    markdown,
    measured_rows,
    median_errors,
    plot,
    plot_scale,
    shard_writing_row,
)
from harness import ACTORS, SEARCH_BLOCK, best_seconds, cached, gemm_flops, least_contended, run_measured, wait_quiet

from xclr_prep import knn
from xclr_prep.search_methods import EXACT_MAX_CPU, METHODS
from xclr_schemas import EmbeddingRows
from xclr_schemas.names import CHECKPOINTS, GRAPH, LATEST, LAYOUT, MANIFEST, METRICS

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
COMMAND = "HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 .venv/bin/python benchmarks/cost_model.py"
RESULTS = Path(__file__).parent / "results"
GRAPH_BENCH = RESULTS / "graph.json"  # benchmarks/bench_graph.py: eta and the HNSW costs
GPU_RUN = RESULTS / "train_gpu_h100.json"  # benchmarks/bench_train.py on an H100
PER_TAR = 1000
TRAIN_ARGS = ["--arch", "convnet", "--image-size", "32", "--proj-hidden", "512", "--proj-dim", "128",
              "--batch-size", str(TRAIN_BATCH), "--optimizer", "adamw", "--workers", "1", "--device", "cpu",
              "--log-every", "1", "--no-progress"]
CHECKPOINT_ARGS = ["--arch", "resnet50", "--image-size", "224", "--batch-size", "8", "--optimizer", "lars",
                   "--workers", "1", "--device", "cpu", "--steps", "1", "--samples-per-epoch", "8", "--no-progress"]
GROWN_NOISE = 0.5  # the grown corpus's copies: cosine about 1 / sqrt(1 + 0.25) = 0.89 to their source caption
GROWN_PART = 100_000
IVF_GRID_QUERIES = 2_000  # queries timed per setting in ivf_query_costs


# ----------------------------------------------------------------------------------------------------- measuring

def run_command(cmd: list[str], marker: Path | None = None) -> dict:
    """`cmd` run once the machine is quiet and measured (harness.run_measured), as the record cached: the command,
    "wall_seconds", "peaks", the end of its "stdout", the CPU busy fraction before it ("busy_before"),
    "others_cpu" and "tree_cpu_seconds"."""
    busy = wait_quiet()
    m = run_measured(cmd, marker, env=ENV)
    return {"command": m.command, "wall_seconds": m.wall_seconds, "peaks": m.peaks, "stdout": m.stdout[-2000:],
            "busy_before": busy, "others_cpu": m.others_cpu, "tree_cpu_seconds": m.tree_cpu_seconds}


def measured(root: Path, name: str, outputs: list[Path], measure: Callable[[], dict]) -> dict:
    """ROOT/results/NAME.json, or the least contended of up to 3 runs of `measure` (harness) saved there."""
    return cached(root / "results" / f"{name}.json", lambda: least_contended(name, outputs, measure))


def dir_bytes(path: Path, exclude: Path | None = None) -> int:
    """Apparent size of the files under `path` (those under `exclude` left out)."""
    return sum(f.stat().st_size for f in path.rglob("*")
               if f.is_file() and (exclude is None or exclude not in f.parents))


def write_corpus(root: Path, n: int) -> list[Path]:
    """The first `n` samples of the corpus (module docstring) as tars of PER_TAR samples. Tars written before are
    left as they are: the embed directories made from them record them, and the graph stage refuses a corpus
    modified since (a smaller corpus is a prefix of a larger one, so only the missing tars are added)."""
    from xclr_prep.sample_corpora import write_scene_tars

    if n % PER_TAR:
        raise SystemExit(f"sizes must be multiples of {PER_TAR}, not {n}")
    corpus = root / "corpus"
    tars = [corpus / f"{i:05d}.tar" for i in range(n // PER_TAR)]
    missing = [t for t in tars if not t.exists()]
    if missing:
        fresh = root / "corpus.tmp"
        shutil.rmtree(fresh, ignore_errors=True)
        write_scene_tars(fresh, n, seed=0, per_tar=PER_TAR)
        corpus.mkdir(exist_ok=True)
        for t in missing:
            (fresh / t.name).rename(t)
        shutil.rmtree(fresh)
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
        run = run_command([str(BIN / "xclr-prep"), "embed", *map(str, tars), "--out", str(out), "--no-progress"])
        manifest = json.loads((out / MANIFEST).read_text())
        return {**run, "n": n, "unique_captions": manifest["counts"]["unique_captions"], "timing": manifest["run"],
                "disk_bytes": dir_bytes(out)}

    return measured(root, f"embed-{n}", [out], measure)

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
        run = run_command([str(BIN / "xclr-prep"), "graph", str(embed_dir or root / f"embed-{n}"), "--out", str(out),
                           "--index", index, "--shard-samples", "1000", "--no-progress"],
                          marker=out / GRAPH / MANIFEST)
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

    return measured(root, name, [out], measure)


def measure_train(root: Path, name: str, shards: Path, args: list[str]) -> dict:
    out = root / f"train-{name}"

    def measure() -> dict:
        run = run_command([str(BIN / "xclr-train"), "--data", str(shards), "--out", str(out), *args])
        lines = [json.loads(x) for x in (out / METRICS).read_text().splitlines() if x.strip()]
        return {**run, "args": args, "disk_bytes": dir_bytes(out),
                "checkpoint_bytes": (out / CHECKPOINTS / LATEST).stat().st_size,
                "median_step_seconds": float(np.median([x["step_time"] for x in lines])),
                "median_data_seconds": float(np.median([x["data_time"] for x in lines]))}

    return measured(root, f"train-{name}", [out], measure)


def train_steps_args(steps: int) -> list[str]:
    return [*TRAIN_ARGS, "--steps", str(steps), "--samples-per-epoch", str(steps * TRAIN_BATCH)]


def gemm_rate(root: Path) -> dict:
    """harness.gemm_flops of the exact search's block shape, once the machine is quiet; cached in
    ROOT/results/gemm.json."""
    def measure() -> dict:
        busy = wait_quiet()
        return {"flops": gemm_flops(DIM, SEARCH_BLOCK), "cores": os.cpu_count(), "busy_before": busy}

    return cached(root / "results" / "gemm.json", measure)


def ivf_query_costs(root: Path, n0: int) -> dict:
    """Seconds per query of the CPU IVF index as the graph stage builds it, on the first U0 / 4 and all U0 captions
    of root/embed-U0 (so that the vectors per list differ), each searched at nprobe in nlist / (64, 16, 4, 1) times
    each of the method's re-ranking factors (best of 2); and the least-squares fit q = q0 + q_p nprobe + q_c codes
    + q_r candidates (lists probed, codes = nprobe U / nlist scanned, candidates = refine (k + 1) re-ranked).
    Cached in ROOT/results/ivf-queries-U0.json."""
    def measure() -> dict:
        busy = wait_quiet()
        rows = EmbeddingRows(root / f"embed-{n0}")
        queries = rows.take(np.sort(np.random.default_rng(0).choice(rows.n, IVF_GRID_QUERIES, replace=False)))
        ivf, grid = METHODS["ivf"], []
        for n in (rows.n // 4, rows.n):
            index = knn.build_index(rows, np.arange(n), ivf.recipe(n, rows.dim, "faiss-cpu"), seed=0)
            nlist = knn.nlist(index)
            for nprobe in (nlist // 64, nlist // 16, nlist // 4, nlist):
                for refine in ivf.refine_factors:
                    knn.set_search_parameter(index, "ivf", knn.SearchParams(nprobe, refine))
                    seconds = best_seconds(lambda: index.search(queries, K_NEIGHBORS + 1), 2)
                    grid.append({"n": n, "nlist": nlist, "nprobe": nprobe, "refine": refine,
                                 "codes": nprobe * n / nlist, "candidates": refine * (K_NEIGHBORS + 1),
                                 "seconds": seconds / len(queries)})
        design = np.array([[1.0, g["nprobe"], g["codes"], g["candidates"]] for g in grid])
        seconds = np.array([g["seconds"] for g in grid])
        coef, *_ = np.linalg.lstsq(design, seconds, rcond=None)
        return {"queries": IVF_GRID_QUERIES, "busy_before": busy, "grid": grid,
                "fit": dict(zip(("q0", "per_list", "per_code", "per_candidate"), map(float, coef))),
                "max_abs_rel_residual": float(np.max(np.abs(design @ coef - seconds) / seconds))}

    return cached(root / "results" / f"ivf-queries-{n0}.json", measure)


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


# ----------------------------------------------------------------------------------------------------- the run

def calibration(root: Path, args: argparse.Namespace) -> tuple[Coefficients, int]:
    """The coefficients from the calibration runs (measured or cached), and U0: the largest check size <=
    EXACT_MAX_CPU, where the `--index ivf` and `--index hnsw` runs are."""
    gemm = gemm_rate(root)
    embeds = [measure_embed(root, n) for n in args.calibration]
    graphs = [measure_graph(root, n) for n in args.calibration]
    shards = root / f"shards-{args.calibration[-1]}"
    trains = [{**measure_train(root, f"steps-{s}", shards, train_steps_args(s)), "steps": s}
              for s in args.train_steps]
    checkpoint = measure_train(root, "resnet50-checkpoint", shards, CHECKPOINT_ARGS)
    approx_n = max(n for n in args.check if n <= EXACT_MAX_CPU)  # above, auto picks IVF
    measure_embed(root, approx_n)  # a check run as well; the IVF runs search its embeddings
    runs = CalibrationRuns(embeds, graphs, trains, checkpoint, gemm, measure_graph(root, approx_n, "ivf"),
                           ivf_query_costs(root, approx_n), json.loads(GRAPH_BENCH.read_text()))
    return calibrate(runs), approx_n


def check(root: Path, args: argparse.Namespace, coeffs: Coefficients, this: Cluster,
          approx_n: int) -> tuple[list[dict], dict]:
    """The check rows (cost_report) of every check run, and which cached runs they are."""
    rows, check_runs = [], {}
    for n in args.check:
        embed, graph = measure_embed(root, n), measure_graph(root, n)
        steps = check_steps(n)
        train = measure_train(root, f"n{n}", root / f"shards-{n}", train_steps_args(steps))
        predicted = predict(coeffs, this, n, train_steps=steps)
        check_runs[n] = {"embed": embed["name"], "graph": graph["name"], "search": search_record(graph),
                         "train": train["name"], "train_steps": steps}
        for stage, got in measured_rows(embed, graph, train).items():
            rows += compare(n, stage, predicted[stage], got)
    hnsw = measure_graph(root, approx_n, "hnsw")
    check_runs[f"{approx_n} hnsw"] = {"graph": hnsw["name"], "search": search_record(hnsw)}
    predicted = predict(coeffs, this, approx_n, method="hnsw")["graph search"]
    rows += compare(approx_n, "graph search (hnsw)", predicted, graph_search_row(hnsw))
    for n in args.grow:
        grown = write_grown_embed_dir(root / f"embed-{args.check[-1]}", root / f"embed-grown-{n}", n)
        graph = measure_graph(root, n, embed_dir=grown)
        check_runs[n] = {"graph": graph["name"], "search": search_record(graph), "grown_from": args.check[-1]}
        predicted = predict(coeffs, this, n)
        rows += compare(n, "graph search", predicted["graph search"], graph_search_row(graph))
        rows += compare(n, "shard writing", predicted["shard writing"], shard_writing_row(graph))
    return rows, check_runs


def search_record(graph: dict) -> dict:
    """What a measured graph run's search was: the method, the index and its tuned settings with their build and
    tuning seconds, and the recall measured against exact search."""
    return {"method": graph["method"], "index": graph["index"], "recall": graph["recall"]}


def parse_args() -> argparse.Namespace:
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
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    root = args.root.resolve()
    coeffs, approx_n = calibration(root, args)
    this = Cluster(f"this machine ({os.cpu_count()} cores, shared)", 1, os.cpu_count(),
                   psutil.virtual_memory().total / 2**30)
    rows, check_runs = check(root, args, coeffs, this, approx_n)
    cluster = Cluster(f"{args.nodes} CPU nodes x {args.cores} cores, {args.memory_gib:g} GiB each; "
                      f"{args.gpu_nodes} GPU nodes x {args.gpus_per_node} H100, "
                      f"{args.loader_workers_per_gpu} DataLoader workers per GPU",
                      args.nodes, args.cores, args.memory_gib, args.gpu_nodes, args.gpus_per_node,
                      args.loader_workers_per_gpu)
    image_bytes = mean_image_bytes()
    scale_coeffs = coeffs if args.image_bytes is None else with_image_bytes(coeffs, image_bytes, args.image_bytes)
    gpu = gpu_training(json.loads(GPU_RUN.read_text()), f"benchmarks/results/{GPU_RUN.name} (earlier H100 run)")
    errors, errors_by_n = median_errors(rows)
    result = {
        "command": " ".join([COMMAND, *map(shlex.quote, sys.argv[1:])]),
        "machine": this.name, "calibration_sizes": args.calibration, "calibration_train_steps": args.train_steps,
        "corpus": "scene captions (xclr_prep.scene_captions, seed 0), each with a Fashion-MNIST PNG (cycled, "
                  f"{image_bytes / 1e3:.2f} KB mean), img2dataset-style tars of {PER_TAR}; --shard-samples 1000",
        "training_measured": f"CPU: {' '.join(TRAIN_ARGS)}; check runs train min(N/1000, {CHECK_MAX_STEPS}) steps",
        "coefficients": asdict(coeffs), "gpu_training": asdict(gpu), "check_runs": check_runs, "check": rows,
        "median_abs_rel_error": errors, "median_abs_rel_error_by_n": errors_by_n,
        "processes": process_rows(root, [*args.check, *args.grow]), "cluster": asdict(cluster),
        "image_bytes_at_scale": args.image_bytes or image_bytes,
        "predictions": [{"n": n, "stages": predict_cluster(scale_coeffs, cluster, n, gpu)} for n in args.predict],
        "predictions_this_machine": [{"n": n, "stages": predict(coeffs, this, n)} for n in args.predict],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost_model.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out / "cost-plots" / "predicted-vs-measured.png")
    plot_scale(coeffs, this, rows, args.out / "cost-plots" / "scale.png")
    md = markdown(result)
    (args.out / "cost_model.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
