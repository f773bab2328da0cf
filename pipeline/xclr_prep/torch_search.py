"""Exact top-k search in torch: the torch-cuda engine of `xclr_prep.knn`, in a module of its own that imports
neither FAISS nor Ray, so that a GPU node without them can run and time it (benchmarks/gpu_check.py).

The database is streamed in blocks of DB_BLOCK rows: per block, one matmul of the queries against it and a top-k
of its similarities; the block's best are merged with the running best by another top-k. Memory on the device, in
fp16: the queries and one block, (q + DB_BLOCK) * dim * 2 bytes, the block's similarities in fp16 and their float32
copy, q * DB_BLOCK * 6 bytes (6 GiB at q = 16,384), and the running best, q * 2k * 12 bytes.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

DB_BLOCK = 65_536


class Rows(Protocol):
    """Row access to the database's embeddings (`xclr_schemas.EmbeddingRows` is one)."""

    def take(self, ids: np.ndarray) -> np.ndarray: ...


def exact_search_torch(rows: Rows, queries: np.ndarray, database_ids: np.ndarray, k: int,
                       device: str) -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids), each (len(queries), k), best first: the k database rows (among `database_ids`) with the
    largest inner product with each query, in fp16 matmuls on CUDA (fp32 elsewhere, as in tests). torch is
    imported here, not with the module: the graph driver imports `knn` and loads no model stack."""
    import torch

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
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
