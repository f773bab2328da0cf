"""Graph search and shard writing, each against a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_graph.py --embed-dir runs/bench/wordnet-all-embed \
        --shards-n 20000 --out benchmarks/results/graph.json

Search (the caption embeddings of an embed directory, e.g. all WordNet glosses and examples):
- GEMM: numpy float32 matrix multiply of the search's shape (harness.gemm_flops): FLOP/s of this machine.
- exact: `knn.exact_neighbors` over every caption, blocks of harness.SEARCH_BLOCK queries; its FLOP/s
  = 2 N^2 dim / seconds, as a fraction of GEMM.
- ivf, hnsw: build + tune (to recall 0.95) + search every caption; speed-up = exact seconds / seconds; recall@k
  over *all* captions against the exact run.
- With --queries Q (for corpora where exact search of every caption takes hours): every method searches the same Q
  random captions (seed 0), and the time of the whole graph is projected as build + tune + N x (query seconds / Q);
  recall@k is over the Q queries.
Each method runs in its own process; peak RSS is that process's, against N * dim * 2 (the fp16 embeddings).

Shards (--shards-n N, 0 to skip): the first N WordNet captions, each with a tuxpaint stamp PNG (cycled), as
img2dataset tars; `xclr-prep embed`, then `xclr-prep graph --shard-samples 2000` end to end. Write MB/s = shard
bytes / the write phase's seconds (read, decode check, neighbours, tar, fsync), against GNU tar copying the corpus
tars' members into one tar (``tar -Af copy.tar src...``), without and with an fsync of the copy.
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from harness import SEARCH_BLOCK as BLOCK
from harness import gemm_flops

from xclr_prep.options import DEFAULT_K as K
from xclr_prep.search_methods import METHODS
from xclr_schemas.names import MANIFEST


def _one(method: str, embed_dir: str, exact_path: str, queries: int | None) -> dict:
    """Run one method over every caption (or `queries` of them) in this process; save/compare the neighbours."""
    from xclr_prep import knn
    from xclr_schemas import EmbeddingRows

    rows = EmbeddingRows(embed_dir)
    ids = np.arange(rows.n)
    wanted = ids if queries is None or queries >= rows.n else \
        np.sort(np.random.default_rng(0).permutation(rows.n)[:queries])
    started = time.perf_counter()
    out = {"method": method}
    if method == "gemm":
        return {"method": method, "flops": gemm_flops(rows.dim, BLOCK), "dim": rows.dim}
    if method == "exact":
        found = np.concatenate([knn.exact_neighbors(rows, wanted[s:s + BLOCK], ids, K)[1]
                                for s in range(0, len(wanted), BLOCK)])
        np.save(exact_path, found)
    else:
        index = knn.build_index(rows, ids, METHODS[method].recipe(len(ids), rows.dim, "faiss-cpu"), seed=0)
        out["build_seconds"] = time.perf_counter() - started
        sample = np.sort(np.random.default_rng(0).permutation(rows.n)[:1000])
        search, tuned = knn.tune(index, method, rows, sample, ids, K, 0.95)
        knn.set_search_parameter(index, method, search)
        out.update(parameter=METHODS[method].parameter, value=search.value, refine=search.refine,
                   tuning_recall=tuned,
                   tune_seconds=time.perf_counter() - started - out["build_seconds"])
        found = np.concatenate([knn.index_neighbors(index, rows, wanted[s:s + BLOCK], ids, K)[1]
                                for s in range(0, len(wanted), BLOCK)])
    out["seconds"] = time.perf_counter() - started
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the recall check
    if len(wanted) < rows.n:  # the whole graph: the fixed costs plus every caption at the measured query rate
        fixed = out.get("build_seconds", 0.0) + out.get("tune_seconds", 0.0)
        out.update(queries=len(wanted), measured_seconds=out["seconds"],
                   seconds=fixed + (out["seconds"] - fixed) * rows.n / len(wanted))
    if method != "exact":
        exact = np.load(exact_path)
        exact_sims = np.concatenate([np.einsum("nd,nkd->nk", rows.take(wanted[s:s + BLOCK]),
                                               rows.take(exact[s:s + BLOCK].ravel()).reshape(-1, K, rows.dim))
                                     for s in range(0, len(wanted), BLOCK)])
        out["recall_all"] = float(np.mean([knn.recall_at_k(rows, wanted[s:s + BLOCK], found[s:s + BLOCK],
                                                           exact_sims[s:s + BLOCK])
                                           for s in range(0, len(wanted), BLOCK)]))
    out.update(n=rows.n, dim=rows.dim)
    return out


def _run_one(method: str, embed_dir: Path, exact_path: Path, queries: int | None) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", method, "--embed-dir", str(embed_dir),
                           "--exact-path", str(exact_path), *(["--queries", str(queries)] if queries else [])],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _write_corpus(out: Path, n: int) -> None:
    from xclr_prep.sample_corpora import tuxpaint_stamps, wordnet_captions

    captions = wordnet_captions(n)
    pngs = [png.read_bytes() for png, _, _ in tuxpaint_stamps()]
    out.mkdir(parents=True)
    for shard, start in enumerate(range(0, n, 10_000)):
        with tarfile.open(out / f"{shard:05d}.tar", "w") as tar:
            for i in range(start, min(n, start + 10_000)):
                key = captions.column("key")[i].as_py()
                for name, data in ((f"{key}.png", pngs[i % len(pngs)]),
                                   (f"{key}.txt", captions.column("caption")[i].as_py().encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def _shards(n: int, work: Path) -> dict:
    corpus = work / "corpus"
    _write_corpus(corpus, n)
    xclr = [sys.executable, "-m", "xclr_prep"]
    subprocess.run(xclr + ["embed", str(corpus), "--out", str(work / "embed"), "--no-progress"], check=True,
                   capture_output=True)
    subprocess.run(xclr + ["graph", str(work / "embed"), "--out", str(work / "shards"), "--shard-samples", "2000",
                           "--no-progress"], check=True, capture_output=True)
    m = json.loads((work / "shards" / MANIFEST).read_text())
    shard_bytes = sum(s["bytes"] for s in m["shards"])
    sources = sorted(str(p) for p in corpus.glob("*.tar"))
    t = time.perf_counter()
    subprocess.run(["tar", "-cf", str(work / "copy.tar"), "--files-from", "/dev/null"], check=True)
    subprocess.run(["tar", "-Af", str(work / "copy.tar")] + sources, check=True)
    tar_seconds = time.perf_counter() - t
    subprocess.run(["sync", str(work / "copy.tar")], check=True)  # durable, as each shard is fsynced
    tar_sync_seconds = time.perf_counter() - t
    tar_bytes = (work / "copy.tar").stat().st_size
    write = m["run"]["write_seconds"]
    return {"samples": m["counts"]["written"], "shards": m["counts"]["shards"], "shard_mb": shard_bytes / 1e6,
            "write_seconds": write, "write_mb_s": shard_bytes / 1e6 / write, "tar_copy_mb": tar_bytes / 1e6,
            "tar_copy_seconds": tar_seconds, "tar_copy_mb_s": tar_bytes / 1e6 / tar_seconds,
            "ratio_vs_tar_copy": (shard_bytes / write) / (tar_bytes / tar_seconds),
            "tar_copy_fsync_mb_s": tar_bytes / 1e6 / tar_sync_seconds,
            "ratio_vs_tar_copy_fsync": (shard_bytes / write) / (tar_bytes / tar_sync_seconds),
            "locate_seconds": m["run"]["locate_seconds"], "layout_seconds": m["run"]["layout_seconds"],
            "in_group_neighbors_mean": m["groups"]["in_group_neighbors_mean"]}


@click.command()
@click.option("--embed-dir", type=click.Path(exists=True, path_type=Path), default=None,
              help="The caption embeddings the search methods run on (needed unless --methods '').")
@click.option("--shards-n", default=20_000, show_default=True, help="Samples of the shard benchmark (0: skip).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON results; the parts of an existing file that this run skips are kept.")
@click.option("--methods", default="exact,ivf,hnsw", show_default=True, help="Search methods ('' to skip).")
@click.option("--queries", type=int, default=None, help="Search this many random captions, not all (docstring).")
@click.option("--one", default=None, hidden=True)
@click.option("--exact-path", default=None, hidden=True)
def main(embed_dir: Path, shards_n: int, out: Path | None, methods: str, queries: int | None, one: str | None,
         exact_path: str | None) -> None:
    if methods and embed_dir is None:
        raise click.UsageError("the search methods need --embed-dir (or --methods '' to skip them)")
    if one:
        print(json.dumps(_one(one, str(embed_dir), exact_path, queries)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        exact_path = Path(tmp) / "exact.npy"
        results = {}
        if methods:
            results["gemm"] = _run_one("gemm", embed_dir, exact_path, queries)
            for method in methods.split(","):
                results[method] = r = _run_one(method, embed_dir, exact_path, queries)
                print(json.dumps(r), flush=True)
            exact = results["exact"]
            flops = 2 * exact["n"] ** 2 * exact["dim"] / exact["seconds"]
            exact.update(flops=flops, fraction_of_gemm=flops / results["gemm"]["flops"],
                         data_mib=exact["n"] * exact["dim"] * 2 / 2**20)
            for method in methods.split(",")[1:]:
                results[method]["speedup_vs_exact"] = exact["seconds"] / results[method]["seconds"]
        if shards_n:
            results["shards"] = _shards(shards_n, Path(tmp))
    print(json.dumps(results, indent=2))
    if out:
        kept = json.loads(out.read_text()) if out.exists() else {}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**kept, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
