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
    """Rows `rows` of the sparse S of a batch: (len(rows), M) float32.

    caption_ids (M,) >= 0, nbr_ids (M, k) and nbr_sims (M, k) describe the whole batch; samples with the same
    caption carry the same neighbour row. Neighbour ids < 0 (the graph's "no neighbour", sim NaN) match nothing. Work is
    O(M k log M + len(rows) M); nothing of size M x M x k is built.
    """
    uniq, inverse = torch.unique(caption_ids, return_inverse=True)
    u, k = len(uniq), nbr_ids.shape[1]
    first = torch.empty(u, dtype=torch.long, device=caption_ids.device)
    first.scatter_(0, inverse.flip(0), torch.arange(len(caption_ids) - 1, -1, -1, device=caption_ids.device))
    ids, sims = nbr_ids[first], nbr_sims[first].float()
    pos = torch.searchsorted(uniq, ids).clamp(max=u - 1)
    hit = uniq[pos] == ids
    src = torch.arange(u, device=ids.device)[:, None].expand(u, k)[hit]
    dst, sim = pos[hit], sims[hit]

    row_caps, row_inverse = torch.unique(inverse[rows], return_inverse=True)
    slot = torch.full((u,), -1, dtype=torch.long, device=ids.device)
    slot[row_caps] = torch.arange(len(row_caps), device=ids.device)
    out = torch.full((len(row_caps) * u,), float("-inf"), device=ids.device)
    for a, b in ((src, dst), (dst, src)):  # edge a -> b fills S[a, b] and, by symmetry, S[b, a]
        keep = slot[a] >= 0
        out.scatter_reduce_(0, slot[a][keep] * u + b[keep], sim[keep], reduce="amax")
    out = out.view(len(row_caps), u)
    out = torch.where(torch.isinf(out), torch.full_like(out, floor), out)
    out[torch.arange(len(row_caps), device=ids.device), row_caps] = 1.0
    return out[row_inverse][:, inverse]


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
