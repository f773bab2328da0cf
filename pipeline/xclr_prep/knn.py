"""Top-k search over L2-normalised caption embeddings (inner product = cosine): exact and approximate.

Exact: queries against the database streamed in blocks of `DB_BLOCK` rows, per-query heaps merged across blocks.
Memory is the query block, one database block and the heaps: (q + DB_BLOCK) * dim * 4 + q * (k + 1) * 12 bytes;
nothing is N x N.

Engines (`select_engine`), by worker device and FAISS build:

| method | CPU worker | GPU worker, faiss-gpu wheel | GPU worker, faiss-cpu wheel |
|---|---|---|---|
| exact | faiss-cpu (`faiss.knn`, fp32) | faiss-gpu (`faiss.knn_gpu`, fp16 inputs) | torch-cuda (fp16 matmul + top-k) |
| ivf | faiss-cpu | faiss-gpu (the IVF index trained, filled and searched on the GPU) | faiss-cpu |
| hnsw | faiss-cpu | faiss-cpu (FAISS has no GPU HNSW) | faiss-cpu |

Approximate (`index_recipe`), its search parameter (nprobe / efSearch) tuned on a query sample until recall@k
reaches the target:
- ivf on CPU: ``IVF{nlist},PQ{D/2}x4fs,Refine(SQfp16)``. The probed lists are scanned as 4-bit PQ codes (FAISS's
  SIMD fast-scan), and the best `refine` * (k + 1) candidates are re-ranked with fp16 vectors (the embeddings
  are stored in fp16, so the re-ranking is exact). At 1M scene captions: 9.96x faster than exact search at
  recall@32 0.957, where IVF-SQfp16, which scans fp16 codes, was 1.23x (docs/benchmarks.md, Graph search).
- ivf on the faiss-gpu engine: ``IVF{nlist},SQfp16`` (FAISS's GPU indexes have no fast-scan nor refinement; the
  GPU scans fp16 codes at memory speed).
- hnsw: ``HNSW32`` with float vectors.

recall@k of a found list = |{found j : cos(q, j) >= s_k(q) - 1e-4}| / k, with s_k(q) the exact k-th similarity:
ties at the k-th place count as hits, so recall 1.0 means "as good as exact", whichever tied id was returned.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import faiss
import numpy as np

from xclr_schemas import EmbeddingRows

DB_BLOCK = 65_536
METHODS = ("exact", "ivf", "hnsw")
ENGINES = ("faiss-cpu", "faiss-gpu", "torch-cuda")
HNSW_M = 32
REFINE_FACTORS = (4, 16, 64)  # CPU IVF: candidates re-ranked per result, tried in this order (`tune`)
_TIE_EPS = 1e-4
_TUNING_MARGIN = 0.01  # tune a little above the target: the final recall is measured on another sample


@dataclass(frozen=True)
class SearchParams:
    """How an approximate index searches: `value` is nprobe (ivf) or efSearch (hnsw); `refine`, of a CPU IVF
    index, how many candidates per result are re-ranked with the fp16 vectors (1 elsewhere)."""

    value: int
    refine: int = 1


def faiss_gpu_build() -> bool:
    """Whether this process's FAISS is the faiss-gpu wheel (the driver and the workers install the same one)."""
    return hasattr(faiss, "StandardGpuResources")


def select_engine(method: str, device: str, faiss_gpu: bool) -> str:
    """The engine that runs `method` on a worker of `device` ("cpu" or "cuda") with the faiss-gpu wheel or not
    (the table in the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    if device != "cuda" or method == "hnsw":
        return "faiss-cpu"
    if faiss_gpu:
        return "faiss-gpu"
    return "torch-cuda" if method == "exact" else "faiss-cpu"


@functools.cache
def _gpu_resources() -> faiss.StandardGpuResources:
    return faiss.StandardGpuResources()


def exact_search(rows: EmbeddingRows, queries: np.ndarray, database_ids: np.ndarray, k: int,
                 engine: str = "faiss-cpu") -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids), each (len(queries), k), best first: the k database rows (among `database_ids`, sorted) with
    the largest inner product with each query."""
    if engine == "torch-cuda":
        return _exact_search_torch(rows, queries, database_ids, k, "cuda")
    gpu = engine == "faiss-gpu"
    if gpu:
        queries = queries.astype(np.float16)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(database_ids), DB_BLOCK):
        ids = database_ids[start:start + DB_BLOCK]
        if gpu:
            sims, local = faiss.knn_gpu(_gpu_resources(), queries, rows.take(ids).astype(np.float16),
                                        min(k, len(ids)), metric=faiss.METRIC_INNER_PRODUCT)
        else:
            sims, local = faiss.knn(queries, rows.take(ids), min(k, len(ids)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(sims, ids[local])
    heap.finalize()
    return heap.D, heap.I


def _exact_search_torch(rows: EmbeddingRows, queries: np.ndarray, database_ids: np.ndarray, k: int,
                        device: str) -> tuple[np.ndarray, np.ndarray]:
    """The exact search as fp16 matmuls + top-k in torch (the torch-cuda engine; `device` may be "cpu" in tests,
    then in fp32)."""
    import torch

    dtype = torch.float16 if device == "cuda" else torch.float32
    q = torch.from_numpy(queries).to(device, dtype)
    best_sims = torch.full((len(queries), 0), -math.inf, device=device)
    best_ids = torch.empty((len(queries), 0), dtype=torch.int64, device=device)
    for start in range(0, len(database_ids), DB_BLOCK):
        ids = torch.from_numpy(database_ids[start:start + DB_BLOCK]).to(device)
        block = torch.from_numpy(rows.take(database_ids[start:start + DB_BLOCK])).to(device, dtype)
        sims, local = (q @ block.T).float().topk(min(k, len(ids)), dim=1)
        merged_sims = torch.cat([best_sims, sims], dim=1)
        merged_ids = torch.cat([best_ids, ids[local]], dim=1)
        best_sims, order = merged_sims.topk(min(k, merged_sims.shape[1]), dim=1)
        best_ids = merged_ids.gather(1, order)
    return best_sims.cpu().numpy(), best_ids.cpu().numpy()


def drop_self(sims: np.ndarray, ids: np.ndarray, query_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 results per query, remove the query itself, or the last result where the query is absent
    (another caption with an identical embedding can outrank it)."""
    keep = ids != query_ids[:, None]
    keep[keep.all(axis=1), -1] = False
    n, width = ids.shape
    return sims[keep].reshape(n, width - 1), ids[keep].reshape(n, width - 1)


def exact_neighbors(rows: EmbeddingRows, query_ids: np.ndarray, database_ids: np.ndarray, k: int,
                    engine: str = "faiss-cpu") -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids), each (len(query_ids), k): the exact top-k other captions of each query caption."""
    sims, ids = exact_search(rows, rows.take(query_ids), database_ids, k + 1, engine)
    return drop_self(sims, ids, query_ids)


def recall_at_k(rows: EmbeddingRows, query_ids: np.ndarray, found_ids: np.ndarray, exact_sims: np.ndarray) -> float:
    """Mean recall@k of `found_ids` (n, k) against the exact top-k similarities `exact_sims` (n, k), ties counted
    as hits (see the module docstring). Similarities of the found ids are recomputed, not taken on trust."""
    queries = rows.take(query_ids)
    true = np.einsum("nd,nkd->nk", queries, rows.take(np.maximum(found_ids, 0).ravel()).reshape(
        *found_ids.shape, -1))
    hits = (true >= exact_sims[:, -1:] - _TIE_EPS) & (found_ids >= 0) & (found_ids != query_ids[:, None])
    return float(hits.sum(axis=1).mean() / found_ids.shape[1])


def ivf_lists(n: int) -> int:
    """nlist of the IVF index: the power of two nearest 4 * sqrt(n), within [16, 65536] (autofaiss's range)."""
    return int(min(65_536, max(16, 2 ** round(math.log2(4 * math.sqrt(n))))))


def index_recipe(method: str, n: int, dim: int, engine: str) -> str:
    """The FAISS factory string of the `method` index over `n` vectors on `engine` (module docstring); "" for
    exact search, which builds none. A graph's plan records it, so that a graph is never resumed with another."""
    if method == "exact":
        return ""
    if method == "hnsw":
        return f"HNSW{HNSW_M}"
    if engine == "faiss-gpu":
        return f"IVF{ivf_lists(n)},SQfp16"
    return f"IVF{ivf_lists(n)},PQ{dim // 2 if dim % 2 == 0 else dim}x4fs,Refine(SQfp16)"


def index_bytes(method: str, n: int, dim: int) -> int:
    """Memory of the index built on CPU: IVF stores dim / 4 (4-bit codes of 2 dimensions) + 2 * dim (fp16 vectors
    for re-ranking) + 8 (id) bytes per vector and the centroids; HNSW32 4 * dim + 2 * 32 * 4 + 8."""
    if method == "ivf":
        return n * (dim // 4 + 2 * dim + 8) + ivf_lists(n) * dim * 4
    return n * (4 * dim + 2 * HNSW_M * 4 + 8)


def build_index(rows: EmbeddingRows, database_ids: np.ndarray, recipe: str, seed: int,
                engine: str = "faiss-cpu") -> faiss.Index:
    """The index `recipe` (a FAISS factory string, `index_recipe`) over `database_ids`, filled in blocks. An IVF
    index is trained first (k-means on at most 64 points per list); on the faiss-gpu engine it lives on the GPU
    (`to_cpu` gives the copy to save)."""
    index = faiss.index_factory(rows.dim, recipe, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        nlist = ivf.nlist
        if engine == "faiss-gpu":
            index = on_engine(index, engine)
            index.cp.seed = seed
        else:  # the refinement index numbers vectors 0..n-1: the map gives them their caption ids
            ivf.cp.seed = seed
            index = faiss.IndexIDMap(index)
        rng = np.random.default_rng(seed)
        train_ids = np.sort(rng.choice(database_ids, min(len(database_ids), 64 * nlist), replace=False))
        index.train(rows.take(train_ids))
    else:
        index = faiss.IndexIDMap(index)
    for start in range(0, len(database_ids), DB_BLOCK):
        ids = database_ids[start:start + DB_BLOCK]
        index.add_with_ids(rows.take(ids), ids)
    return index


def on_engine(index: faiss.Index, engine: str) -> faiss.Index:
    """`index` itself, or its GPU copy for the faiss-gpu engine."""
    return faiss.index_cpu_to_gpu(_gpu_resources(), 0, index) if engine == "faiss-gpu" else index


def _on_gpu(index: faiss.Index) -> bool:
    return type(index).__name__.startswith("Gpu")


def to_cpu(index: faiss.Index) -> faiss.Index:
    """A CPU copy of a GPU index (to write it); a CPU index as it is."""
    return faiss.index_gpu_to_cpu(index) if _on_gpu(index) else index


def nlist(index: faiss.Index) -> int:
    """The number of inverted lists of an IVF index, on CPU or GPU."""
    return index.getNumLists() if _on_gpu(index) else faiss.extract_index_ivf(index).nlist


def search_parameter(method: str) -> str:
    return "nprobe" if method == "ivf" else "efSearch"


def set_search_parameter(index: faiss.Index, method: str, params: SearchParams) -> None:
    """Set nprobe / efSearch (and a CPU IVF index's re-ranking factor, which FAISS does not save)."""
    if _on_gpu(index):
        faiss.GpuParameterSpace().set_index_parameter(index, search_parameter(method), params.value)
        return
    faiss.ParameterSpace().set_index_parameter(index, search_parameter(method), params.value)
    if method == "ivf":
        faiss.downcast_index(index.index).k_factor = params.refine


def index_neighbors(index: faiss.Index, rows: EmbeddingRows, query_ids: np.ndarray, database_ids: np.ndarray,
                    k: int, exact_engine: str = "faiss-cpu") -> tuple[np.ndarray, np.ndarray, int]:
    """(sims, ids, n_exact): top-k other captions from the index; queries for which it found fewer than k
    (small IVF lists) are searched exactly instead (on `exact_engine`), and counted in n_exact."""
    sims, ids = index.search(rows.take(query_ids), k + 1)
    sims, ids = drop_self(sims, ids, query_ids)
    short = (ids < 0).any(axis=1)
    if short.any():
        sims[short], ids[short] = exact_neighbors(rows, query_ids[short], database_ids, k, exact_engine)
    return sims, ids, int(short.sum())


def tune(index: faiss.Index, method: str, rows: EmbeddingRows, query_ids: np.ndarray, database_ids: np.ndarray,
         k: int, target: float, exact_engine: str = "faiss-cpu") -> tuple[SearchParams, float]:
    """The cheapest parameters whose recall@k on `query_ids` reaches target + margin (or the largest tried), and
    the recall they reach. A CPU IVF index first takes the first of REFINE_FACTORS that reaches it with a quarter of
    the lists probed (where the 4-bit codes rank poorly, re-ranking more candidates is what helps; more lists do
    not), then the smallest power-of-two nprobe; HNSW the smallest power-of-two efSearch. Exact references run on
    `exact_engine`."""
    exact_sims, _ = exact_neighbors(rows, query_ids, database_ids, k, exact_engine)
    goal = min(1.0, target + _TUNING_MARGIN)

    def recall(params: SearchParams) -> float:
        set_search_parameter(index, method, params)
        _, ids, _ = index_neighbors(index, rows, query_ids, database_ids, k, exact_engine)
        return recall_at_k(rows, query_ids, ids, exact_sims)

    refine = 1
    if method == "ivf":
        values = [2**i for i in range(int(math.log2(nlist(index))) + 1)]
        if not _on_gpu(index):
            wide = SearchParams(values[-1] // 4 or 1, REFINE_FACTORS[-1])
            refine = next((f for f in REFINE_FACTORS[:-1] if recall(SearchParams(wide.value, f)) >= goal), wide.refine)
    else:
        values = [2**i for i in range(max(4, math.ceil(math.log2(k + 1))), 13)]
    for value in values:
        reached = recall(SearchParams(value, refine))
        if reached >= goal:
            break
    return SearchParams(value, refine), reached


def background_similarity(rows: EmbeddingRows, valid_ids: np.ndarray, pairs: int, seed: int) -> tuple[float, float]:
    """(mean, std) of the cosine similarity of `pairs` random pairs of distinct valid captions."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(valid_ids), pairs)
    b = (a + rng.integers(1, len(valid_ids), pairs)) % len(valid_ids)  # uniform over the others
    sims = np.concatenate([
        np.einsum("nd,nd->n", rows.take(valid_ids[a[s:s + 65_536]]), rows.take(valid_ids[b[s:s + 65_536]]))
        for s in range(0, pairs, 65_536)])
    return float(sims.mean()), float(sims.std())
