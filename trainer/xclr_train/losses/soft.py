"""The soft-target contrastive cross-entropy that X-CLR and SupCon share (shared/DESIGN.md section 4).

A global batch holds M samples with two views each. Columns are the 2M L2-normalised view projections, views-major:
column j < M is view 1 of sample j, column M + j is view 2 of sample j. A rank holds n anchors (its own views) and
all 2M columns. Each anchor i has its own column self_i and a row w_i of non-negative sample-level weights (length M).

    t_ij  = w_{i, j mod M} / Z_i        for j != self_i,  Z_i = 2 sum_b w_ib - w_{i, self_i mod M}
    loss  = mean_i  - sum_{j != self_i} t_ij log softmax_{j != self_i}(a_i . c_j / tau)

Evaluated as  LSE_i - (a_i . (w_i @ (C_1 + C_2)) - w_{i,self} a_i . c_self) / (tau Z_i):  an (n x M) @ (M x d)
product instead of an elementwise pass over the n x 2M logits.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_logits(anchors: Tensor, columns: Tensor, self_cols: Tensor, tau: float) -> Tensor:
    """a_i . c_j / tau with each anchor's own column set to -inf, shape (n, 2M)."""
    logits = anchors @ columns.T / tau
    return logits.scatter(1, self_cols[:, None], float("-inf"))


def soft_contrastive(anchors: Tensor, columns: Tensor, self_cols: Tensor, weights: Tensor, tau: float) -> Tensor:
    """The loss above; anchors (n, d) and columns (2M, d) unit-norm, self_cols (n,), weights (n, M) >= 0."""
    m = weights.shape[1]
    if columns.shape[0] != 2 * m:
        raise ValueError(f"columns must hold two views of the {m} samples, got {columns.shape[0]} rows")
    lse = torch.logsumexp(masked_logits(anchors, columns, self_cols, tau), dim=1)
    w_self = weights.gather(1, (self_cols % m)[:, None]).squeeze(1)
    z = 2 * weights.sum(1) - w_self
    pulled = weights @ (columns[:m] + columns[m:])  # (n, d): sum_b w_ib (c_b + c_{M+b})
    linear = ((anchors * pulled).sum(1) - w_self * (anchors * columns[self_cols]).sum(1)) / tau
    return (lse - linear / z).mean()
