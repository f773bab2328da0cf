"""Caption-similarity matrices S for a batch (docs/design.md, Targets and loss).

Sparse (what the shards carry, one ``nbr.npy`` row per sample):

    S[a, b] = 1                                    if caption(a) == caption(b)
            = max(sim(a -> b), sim(b -> a))        if either caption is among the other's top-k
            = floor                                otherwise (`floor_similarity`, or -inf with --floor none:
                                                           no target weight)

Dense: S = E E^T from the batch's caption embeddings.
Background calibration maps both to  max(0, (S - b) / (1 - b))  for a background similarity b, so unrelated
pairs weigh exp(-1 / tau_s) of a same-caption pair instead of exp(-(1 - b) / tau_s).
"""

from __future__ import annotations

import torch
from torch import Tensor


def floor_similarity(background: float, kth_mean: float | None) -> float:
    """The floor stands for "not among the top k": the background similarity b (the mean over random caption pairs),
    clipped at the mean k-th neighbour similarity when b is not already below it: min(b, kth_mean)."""
    return background if kth_mean is None else min(background, kth_mean)


def sparse_similarity_rows(caption_ids: Tensor, nbr_ids: Tensor, nbr_sims: Tensor, floor: float,
                           rows: Tensor) -> Tensor:
    """Rows `rows` of the sparse S of a batch: (R, M) float32 for R = len(rows).

    caption_ids (M,) >= 0, nbr_ids (M, k) and nbr_sims (M, k) describe the whole batch; samples with the same
    caption carry the same neighbour row. Neighbour ids < 0 (the graph's "no neighbour", sim NaN) match nothing.

    Every tensor's size follows from M, k and R alone (sorting, searchsorted and scatter; no unique or boolean
    indexing), so on a GPU nothing waits for the host. A caption is represented by its first slot in the sorted
    ids (`rep`); an edge a -> c of a neighbour row lands in row slot rep(a) at column rep(c), and by symmetry in
    the row slot of rep(c) at column rep(a). Work is O(M k log M + R M); nothing of size M x M x k is built.
    """
    m, r = len(caption_ids), len(rows)
    device = caption_ids.device
    ordered = torch.sort(caption_ids).values
    rep = torch.searchsorted(ordered, caption_ids)  # (M,): the caption's first slot in `ordered`
    col = torch.searchsorted(ordered, nbr_ids).clamp_(max=m - 1)  # (M, k): the neighbour caption's slot
    sims = torch.where(ordered[col] == nbr_ids, nbr_sims.float(), float("-inf"))  # -inf: not in the batch
    row_rep = rep[rows]
    slot = torch.full((m,), -1, dtype=torch.long, device=device)
    slot[row_rep] = torch.arange(r, device=device)  # one row slot per caption of `rows` (of repeats, any one)
    row_slot = slot[row_rep]
    out = torch.full((r * m,), float("-inf"), device=device)
    # edges of the rows' own captions, then every sample's edges into a caption of `rows`
    out.scatter_reduce_(0, (row_slot[:, None] * m + col[rows]).flatten(), sims[rows].flatten(), reduce="amax")
    into = slot[col]
    out.scatter_reduce_(0, (into.clamp(min=0) * m + rep[:, None]).flatten(),
                        torch.where(into >= 0, sims, float("-inf")).flatten(), reduce="amax")
    out[row_slot * m + row_rep] = 1.0  # the same caption
    out = out.view(r, m).index_select(0, row_slot).gather(1, rep.expand(r, m))
    return out.nan_to_num_(neginf=floor)  # no edge: the floor (nothing else is infinite or NaN)


def sparse_similarity(caption_ids: Tensor, nbr_ids: Tensor, nbr_sims: Tensor, floor: float) -> Tensor:
    """The whole sparse S (M, M): LongTensor[M], LongTensor[M, k], FloatTensor[M, k], float -> FloatTensor[M, M]."""
    return sparse_similarity_rows(caption_ids, nbr_ids, nbr_sims, floor,
                                  torch.arange(len(caption_ids), device=caption_ids.device))


def graph_positive_rows(caption_ids: Tensor, nbr_ids: Tensor, nbr_sims: Tensor, rows: Tensor) -> Tensor:
    """Rows of the graph's positive mask, (len(rows), M) bool: the same caption, or either caption among the other's
    top-k (the pairs where the sparse S is not the floor)."""
    return torch.isfinite(sparse_similarity_rows(caption_ids, nbr_ids, nbr_sims, float("-inf"), rows))


def dense_similarity_rows(row_embeddings: Tensor, embeddings: Tensor) -> Tensor:
    """Rows of the dense S = E E^T (float32, re-normalised so that S[a, a] = 1)."""
    rows = torch.nn.functional.normalize(row_embeddings.float(), dim=1)
    return rows @ torch.nn.functional.normalize(embeddings.float(), dim=1).T


def calibrate(similarity: Tensor, background: float) -> Tensor:
    """max(0, (S - b) / (1 - b)): the background similarity b maps to 0, an identical caption to 1 (to rounding)."""
    return ((similarity - background) / (1.0 - background)).clamp(min=0.0)
