"""Top-k search over L2-normalised caption embeddings (inner product = cosine): exact and approximate.

Exact: queries against the database streamed in blocks of `DB_BLOCK` rows, per-query heaps merged across blocks.
Memory is the query block, one database block and the heaps: (q + DB_BLOCK) * dim * 4 + q * (k + 1) * 12 bytes;
nothing is N x N. The torch-cuda engine's exact search is `xclr_prep.torch_search`.

Methods, their engines and their FAISS recipes: `xclr_prep.search_methods`. An approximate index's search parameter
(nprobe / efSearch, and a CPU IVF index's re-ranking factor) is tuned on a query sample until recall@k reaches the
target (`tune`).

recall@k of a found list = |{found j : cos(q, j) >= s_k(q) - 1e-4}| / k, with s_k(q) the exact k-th similarity:
ties at the k-th place count as hits, so recall 1.0 means "as good as exact", whichever tied id was returned.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import faiss
import numpy as np

from xclr_prep.search_methods import method as search_method
from xclr_prep.torch_search import DB_BLOCK, exact_search_torch
from xclr_schemas import EmbeddingRows

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


@functools.cache
def _gpu_resources() -> faiss.StandardGpuResources:
    return faiss.StandardGpuResources()


def exact_search(rows: EmbeddingRows, queries: np.ndarray, database_ids: np.ndarray, k: int,
                 engine: str = "faiss-cpu") -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids), each (len(queries), k), best first: the k database rows (among `database_ids`, sorted) with
    the largest inner product with each query."""
    if engine == "torch-cuda":
        return exact_search_torch(rows, queries, database_ids, k, "cuda")
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


def build_index(rows: EmbeddingRows, database_ids: np.ndarray, recipe: str, seed: int,
                engine: str = "faiss-cpu") -> faiss.Index:
    """The index `recipe` (a FAISS factory string, `SearchMethod.recipe`) over `database_ids`, filled in blocks. An IVF
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
    """The number of inverted lists of an IVF index, on CPU or GPU; 0 for an index of another kind."""
    if _on_gpu(index):
        return index.getNumLists()
    ivf = faiss.try_extract_index_ivf(index)
    return ivf.nlist if ivf is not None else 0


def set_search_parameter(index: faiss.Index, method: str, params: SearchParams) -> None:
    """Set the `method` index's search parameter (and a CPU index's re-ranking factor, which FAISS does not
    save)."""
    record = search_method(method)
    if _on_gpu(index):
        faiss.GpuParameterSpace().set_index_parameter(index, record.parameter, params.value)
        return
    faiss.ParameterSpace().set_index_parameter(index, record.parameter, params.value)
    if record.refine_factors:
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
    the recall they reach, trying the method's grid (`xclr_prep.search_methods`). A CPU IVF index first takes the
    first of its re-ranking factors that reaches it with a quarter of the lists probed (where the 4-bit codes rank
    poorly, re-ranking more candidates is what helps; more lists do not), then the smallest power-of-two nprobe;
    HNSW the smallest power-of-two efSearch. Exact references run on `exact_engine`."""
    exact_sims, _ = exact_neighbors(rows, query_ids, database_ids, k, exact_engine)
    goal = min(1.0, target + _TUNING_MARGIN)

    def recall(params: SearchParams) -> float:
        set_search_parameter(index, method, params)
        _, ids, _ = index_neighbors(index, rows, query_ids, database_ids, k, exact_engine)
        return recall_at_k(rows, query_ids, ids, exact_sims)

    record = search_method(method)
    values = record.grid(nlist(index), k)
    refine = 1
    if record.refine_factors and not _on_gpu(index):
        wide = SearchParams(values[-1] // 4 or 1, record.refine_factors[-1])
        refine = next((f for f in record.refine_factors[:-1] if recall(SearchParams(wide.value, f)) >= goal),
                      wide.refine)
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
