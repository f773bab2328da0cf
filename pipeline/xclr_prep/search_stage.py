"""The graph search: every caption's top-k other captions, queries sharded over a Ray actor pool.

Units are query blocks of `block_size` caption ids. A unit searches its block (`xclr_prep.knn`), writes its rows of
``G/neighbors.npy`` in place (the file is created once, full size, under a temporary name) and then its done marker;
a block without a marker is searched again by the rerun. Approximate methods first build and tune the index the plan
records (`GraphPlan.index`) once (``G/index.faiss`` + ``G/index.json``, written in that order) on the first actor;
the other actors load it from disk. A worker whose engine would build another index (a node with another FAISS wheel
than the driver's) refuses to start. When every block is done, the first actor measures recall@k of the written rows
on a query sample against exact search, the background similarity and the mean k-th similarity.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from xclr_prep.errors import PrepError
from xclr_prep.raypool import get, run_stage
from xclr_prep.search_methods import METHODS
from xclr_schemas import NEIGHBOR_DTYPE, EmbeddingRows
from xclr_schemas.atomic import write_atomic, write_json_atomic
from xclr_schemas.graph_dir import block_marker
from xclr_schemas.names import INDEX, INDEX_PARAMS, NEIGHBORS

TUNING_QUERIES = 1_000
RECALL_QUERIES = 2_000
BACKGROUND_PAIRS = 200_000


@dataclass(frozen=True)
class GraphPlan:
    """What defines a graph (its manifest's "plan", fingerprinted): an OUT holding another plan is refused."""
    schema_version: str
    embed_manifest_sha256: str
    k: int
    method: str  # a name in `xclr_prep.search_methods.METHODS`
    recall_target: float
    block_size: int
    device: str
    seed: int  # of the index's training sample, tuning and recall queries
    index: str = ""  # FAISS factory of the approximate index (SearchMethod.recipe); "" for exact, and before it existed


@dataclass(frozen=True)
class SearchBlock:
    """Query block `index`: the caption ids [start, end)."""
    index: int
    start: int
    end: int

    @property
    def weight(self) -> int:
        return self.end - self.start  # captions


class SearchWorker:
    """Ray actor: searches query blocks of one graph."""

    def __init__(self, embed_dir: str, graph_dir: str, plan: GraphPlan, invalid_ids: np.ndarray, device: str,
                 threads: int) -> None:
        import faiss

        from xclr_prep import knn

        faiss.omp_set_num_threads(threads)
        self.rows = EmbeddingRows(embed_dir)
        self.graph = Path(graph_dir)
        self.k, self.method, self.recipe = plan.k, plan.method, plan.index
        gpu_build = knn.faiss_gpu_build()
        self.engine = METHODS[plan.method].engine(device, gpu_build)
        self.exact_engine = METHODS["exact"].engine(device, gpu_build)  # references and fallbacks
        self.valid_ids = np.setdiff1d(np.arange(self.rows.n, dtype=np.int64), invalid_ids)
        if METHODS[plan.method].recipe(len(self.valid_ids), self.rows.dim, self.engine) != plan.index:
            raise PrepError(f"a search worker's FAISS engine ({self.engine}) does not build the graph's index "
                            f"{plan.index!r}: install the same faiss wheel (faiss-cpu, or the gpu extra's faiss-gpu) "
                            f"on every node")
        self.index = None

    def engines(self) -> dict:
        return {"search": self.engine, "exact": self.exact_engine}

    def prepare_index(self, seed: int, target: float) -> dict:
        """Build and tune the approximate index, write it and its parameters; returns the parameters."""
        import faiss

        from xclr_prep import knn

        started = time.perf_counter()
        self.index = knn.build_index(self.rows, self.valid_ids, self.recipe, seed, self.engine)
        built = time.perf_counter()
        sample = np.sort(np.random.default_rng(seed).permutation(self.valid_ids)[:TUNING_QUERIES])
        search, recall = knn.tune(self.index, self.method, self.rows, sample, self.valid_ids, self.k, target,
                                  self.exact_engine)
        knn.set_search_parameter(self.index, self.method, search)
        write_atomic(self.graph / INDEX, lambda p: faiss.write_index(knn.to_cpu(self.index), str(p)))
        params = {"parameter": METHODS[self.method].parameter, "value": search.value, "refine": search.refine,
                  "tuning_recall": recall,
                  "tuning_queries": len(sample), "build_seconds": round(built - started, 2),
                  "tune_seconds": round(time.perf_counter() - built, 2)}
        if lists := knn.nlist(self.index):
            params["nlist"] = lists
        write_json_atomic(self.graph / INDEX_PARAMS, params)
        return params

    def search(self, block: SearchBlock) -> dict:
        """Search the block's caption ids, write their rows of neighbors.npy, then the block's marker."""
        from xclr_prep import knn

        index, start, end = block.index, block.start, block.end
        started = time.perf_counter()
        query_ids = self.valid_ids[(self.valid_ids >= start) & (self.valid_ids < end)]
        out = np.empty((end - start, self.k), dtype=NEIGHBOR_DTYPE)
        out["id"], out["sim"] = -1, np.nan
        n_exact = 0
        if len(query_ids):
            if not self.recipe:  # exact: no index
                sims, ids = knn.exact_neighbors(self.rows, query_ids, self.valid_ids, self.k, self.exact_engine)
            else:
                sims, ids, n_exact = knn.index_neighbors(self._index(), self.rows, query_ids, self.valid_ids, self.k,
                                                         self.exact_engine)
            out["id"][query_ids - start], out["sim"][query_ids - start] = ids, sims
        _write_rows(self.graph / NEIGHBORS, start, out)
        marker = {"index": index, "start": start, "end": end, "exact_fallback": n_exact,
                  "seconds": round(time.perf_counter() - started, 3)}
        write_json_atomic(block_marker(self.graph, index), marker)
        return marker

    def _index(self):
        if self.index is None:
            import faiss

            from xclr_prep import knn

            self.index = knn.on_engine(faiss.read_index(str(self.graph / INDEX)), self.engine)
            params = json.loads((self.graph / INDEX_PARAMS).read_text())
            knn.set_search_parameter(self.index, self.method, knn.SearchParams(params["value"], params["refine"]))
        return self.index

    def measure(self, seed: int) -> dict:
        """recall@k of the written graph on a query sample, background similarity, mean k-th similarity."""
        from xclr_prep import knn

        neighbors = np.load(self.graph / NEIGHBORS, mmap_mode="r", allow_pickle=False)
        sample = np.sort(np.random.default_rng(seed).permutation(self.valid_ids)[-RECALL_QUERIES:])
        exact_sims, _ = knn.exact_neighbors(self.rows, sample, self.valid_ids, self.k, self.exact_engine)
        recall = knn.recall_at_k(self.rows, sample, np.asarray(neighbors["id"][sample]), exact_sims)
        mean, std = knn.background_similarity(self.rows, self.valid_ids, BACKGROUND_PAIRS, seed)
        kth = np.concatenate([np.asarray(neighbors["sim"][s:s + 1_000_000, -1])
                              for s in range(0, len(neighbors), 1_000_000)])
        return {"recall": {"k": self.k, "measured": recall, "queries": len(sample)},
                "background_similarity": {"mean": mean, "std": std, "pairs": BACKGROUND_PAIRS},
                "kth_similarity_mean": float(np.nanmean(kth))}


def _write_rows(path: Path, start: int, rows: np.ndarray) -> None:
    """Write `rows` over rows [start, start + len) of the .npy at `path`, in place, and fsync."""
    offset = np.load(path, mmap_mode="r", allow_pickle=False).offset + start * rows.shape[1] * NEIGHBOR_DTYPE.itemsize
    data = memoryview(rows.tobytes())
    fd = os.open(path, os.O_WRONLY)
    try:
        while data:  # pwrite may write less than asked (a nearly full disk): write the rest, or fail with ENOSPC
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written
        os.fsync(fd)
    finally:
        os.close(fd)


def create_neighbors_file(graph: Path, n: int, k: int) -> None:
    """Create ``G/neighbors.npy`` of shape (n, k) (a sparse file until blocks are written) unless it exists."""
    path = graph / NEIGHBORS
    if not path.exists():
        write_atomic(path, lambda p: np.lib.format.open_memmap(p, mode="w+", dtype=NEIGHBOR_DTYPE, shape=(n, k)))


def search_graph(actors: list, graph: Path, n: int, block_size: int, method: str, seed: int, target: float,
                 progress: bool) -> dict:
    """Run the search over `actors` (SearchWorker); returns index parameters, exact fallbacks and measurements."""
    params = None
    if method != "exact":
        params_path = graph / INDEX_PARAMS
        if params_path.exists() and (graph / INDEX).exists():
            params = json.loads(params_path.read_text())
        else:
            params = get(actors[0].prepare_index.remote(seed, target), "building the index")
    blocks = [SearchBlock(i, s, min(n, s + block_size)) for i, s in enumerate(range(0, n, block_size))]
    markers = {b.index: json.loads(block_marker(graph, b.index).read_text()) for b in blocks
               if block_marker(graph, b.index).exists()}
    run_stage(actors, "search", blocks, markers, "search", "caption", progress)
    measured = get(actors[0].measure.remote(seed), "measuring the graph")
    engines = sorted({tuple(e.items()) for e in ray.get([a.engines.remote() for a in actors])})
    return {"index": params, "exact_fallback_queries": sum(m["exact_fallback"] for m in markers.values()),
            "blocks": len(blocks), "engines": [dict(e) for e in engines], **measured}
