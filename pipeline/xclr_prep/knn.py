"""Top-k search over L2-normalised caption embeddings (inner product = cosine): exact and approximate.

Exact: queries against the database streamed in blocks of `DB_BLOCK` rows, per-query heaps merged across blocks
(FAISS `knn` on CPU; a torch matmul + top-k on CUDA). Memory is the query block, one database block and the heaps:
(q + DB_BLOCK) * dim * 4 + q * (k + 1) * 12 bytes; nothing is N x N.

Approximate: FAISS ``IVF{nlist},SQfp16`` (the embeddings are stored in fp16, so fp16 codes lose nothing) or
``HNSW32``, its search parameter (nprobe / efSearch) tuned on a query sample until recall@k reaches the target.

recall@k of a found list = |{found j : cos(q, j) >= s_k(q) - 1e-4}| / k, with s_k(q) the exact k-th similarity:
ties at the k-th place count as hits, so recall 1.0 means "as good as exact", whichever tied id was returned.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from xclr_schemas import EmbeddingRows

DB_BLOCK = 65_536
METHODS = ("exact", "ivf", "hnsw")
HNSW_M = 32
_TIE_EPS = 1e-4
_TUNING_MARGIN = 0.01  # tune a little above the target: the final recall is measured on another sample


def exact_search(rows: EmbeddingRows, queries: np.ndarray, database_ids: np.ndarray, k: int,
                 device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids), each (len(queries), k), best first: the k database rows (among `database_ids`, sorted) with
    the largest inner product with each query."""
    if device == "cuda":
        return _exact_search_torch(rows, queries, database_ids, k, "cuda")
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(database_ids), DB_BLOCK):
        ids = database_ids[start:start + DB_BLOCK]
        sims, local = faiss.knn(queries, rows.take(ids), min(k, len(ids)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(sims, ids[local])
    heap.finalize()
    return heap.D, heap.I


def _exact_search_torch(rows: EmbeddingRows, queries: np.ndarray, database_ids: np.ndarray, k: int,
                        device: str) -> tuple[np.ndarray, np.ndarray]:
    """The exact search as fp16 matmuls + top-k in torch (the GPU path; `device` may be "cpu" in tests)."""
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
                    device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids), each (len(query_ids), k): the exact top-k other captions of each query caption."""
    sims, ids = exact_search(rows, rows.take(query_ids), database_ids, k + 1, device)
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


def index_bytes(method: str, n: int, dim: int) -> int:
    """Memory of the built index: IVF-SQfp16 stores 2 * dim + 8 bytes per vector, HNSW32 4 * dim + 2 * 32 * 4."""
    if method == "ivf":
        return n * (2 * dim + 8) + ivf_lists(n) * dim * 4
    return n * (4 * dim + 2 * HNSW_M * 4 + 8)


def build_index(rows: EmbeddingRows, database_ids: np.ndarray, method: str, seed: int) -> faiss.Index:
    """Train (IVF: k-means on at most 64 points per list) and fill the index with `database_ids`, in blocks."""
    dim = rows.dim
    if method == "ivf":
        nlist = ivf_lists(len(database_ids))
        index = faiss.index_factory(dim, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        train_ids = np.sort(rng.choice(database_ids, min(len(database_ids), 64 * nlist), replace=False))
        faiss.extract_index_ivf(index).cp.seed = seed
        index.train(rows.take(train_ids))
    else:
        index = faiss.IndexIDMap(faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT))
    for start in range(0, len(database_ids), DB_BLOCK):
        ids = database_ids[start:start + DB_BLOCK]
        index.add_with_ids(rows.take(ids), ids)
    return index


def search_parameter(method: str) -> str:
    return "nprobe" if method == "ivf" else "efSearch"


def set_search_parameter(index: faiss.Index, method: str, value: int) -> None:
    faiss.ParameterSpace().set_index_parameter(index, search_parameter(method), value)


def index_neighbors(index: faiss.Index, rows: EmbeddingRows, query_ids: np.ndarray, database_ids: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(sims, ids, n_exact): top-k other captions from the index; queries for which it found fewer than k
    (small IVF lists) are searched exactly instead, and counted in n_exact."""
    sims, ids = index.search(rows.take(query_ids), k + 1)
    sims, ids = drop_self(sims, ids, query_ids)
    short = (ids < 0).any(axis=1)
    if short.any():
        sims[short], ids[short] = exact_neighbors(rows, query_ids[short], database_ids, k)
    return sims, ids, int(short.sum())


def tune(index: faiss.Index, method: str, rows: EmbeddingRows, query_ids: np.ndarray, database_ids: np.ndarray,
         k: int, target: float) -> tuple[int, float]:
    """The smallest power-of-two search parameter whose recall@k on `query_ids` reaches target + margin (or the
    largest tried); returns (value, recall at that value)."""
    exact_sims, _ = exact_neighbors(rows, query_ids, database_ids, k)
    if method == "ivf":
        limit = faiss.extract_index_ivf(index).nlist
        values = [2**i for i in range(int(math.log2(limit)) + 1)]
    else:
        values = [2**i for i in range(max(4, math.ceil(math.log2(k + 1))), 13)]
    goal = min(1.0, target + _TUNING_MARGIN)
    for value in values:
        set_search_parameter(index, method, value)
        _, ids, _ = index_neighbors(index, rows, query_ids, database_ids, k)
        recall = recall_at_k(rows, query_ids, ids, exact_sims)
        if recall >= goal:
            break
    return value, recall


def background_similarity(rows: EmbeddingRows, valid_ids: np.ndarray, pairs: int, seed: int) -> tuple[float, float]:
    """(mean, std) of the cosine similarity of `pairs` random pairs of distinct valid captions."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(valid_ids), pairs)
    b = (a + rng.integers(1, len(valid_ids), pairs)) % len(valid_ids)  # uniform over the others
    sims = np.concatenate([
        np.einsum("nd,nd->n", rows.take(valid_ids[a[s:s + 65_536]]), rows.take(valid_ids[b[s:s + 65_536]]))
        for s in range(0, pairs, 65_536)])
    return float(sims.mean()), float(sims.std())
