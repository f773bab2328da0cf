"""The soft-target contrastive cross-entropy that X-CLR and SupCon share (docs/design.md, Targets and loss).

A global batch holds M samples with two views each. Columns are the 2M L2-normalised view projections, views-major:
column j < M is view 1 of sample j, column M + j is view 2 of sample j. A rank holds n anchors (its own views) and
all 2M columns. Its anchors are the two views of its m samples, [view-1 rows; view-2 rows] (n = 2m); anchor i
has its own column self_i and the row w_i of its sample's non-negative weights over the M samples (an (m, M) matrix
W holds one row per sample: both views share it).

    t_ij  = w_{i, j mod M} / Z_i        for j != self_i,  Z_i = 2 sum_b w_ib - w_{i, self_i mod M}
    loss  = mean_i  - sum_{j != self_i} t_ij log softmax_{j != self_i}(a_i . c_j / tau)

Evaluated as  LSE_i - (a_i . (w_i @ (C_1 + C_2)) - w_{i,self} a_i . c_self) / (tau Z_i):  one (m x M) @ (M x d)
product, shared by both views, instead of an elementwise pass over the n x 2M logits.

A queue (X-CLR's `--queue-size`) adds Q columns k_q without gradient and their weights v (m, Q): the softmax and
the targets then run over the 2M - 1 views and the Q queue entries, t_iq = v_{i,q} / Z_i with
Z_i = 2 sum_b w_ib - w_{i,self} + sum_q v_iq.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LogSumExp(torch.autograd.Function):
    """LSE_i = log sum_j exp(l_ij) of logits (n, N) as  l_i,f - log_softmax(l_i)_f  for a column f(i) where l_i is
    finite, with the gradient softmax(l_i) * g_i from the saved log-softmax: half the time of torch.logsumexp's
    forward + backward on the CPU at n = N = 8192, whose backward makes three passes over the logits."""

    @staticmethod
    def forward(ctx, logits: Tensor, finite: Tensor) -> Tensor:
        log_p = torch.log_softmax(logits, dim=1)
        ctx.save_for_backward(log_p)
        return (logits.gather(1, finite[:, None]) - log_p.gather(1, finite[:, None])).squeeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (log_p,) = ctx.saved_tensors
        return log_p.exp().mul_(grad[:, None]), None


def other_view(self_cols: Tensor, big_m: int) -> Tensor:
    """The column of each anchor's other view: j + M mod 2M for its own column j."""
    return (self_cols + big_m) % (2 * big_m)


def masked_logits(anchors: Tensor, columns: Tensor, self_cols: Tensor, tau: float) -> Tensor:
    """a_i . c_j / tau with each anchor's own column set to -inf, shape (n, 2M)."""
    logits = anchors @ columns.T / tau
    return logits.scatter(1, self_cols[:, None], float("-inf"))


def soft_contrastive(anchors: Tensor, columns: Tensor, self_cols: Tensor, weights: Tensor, tau: float,
                     queue: Tensor | None = None, queue_weights: Tensor | None = None) -> Tensor:
    """The loss above; anchors (2m, d) and columns (2M, d) unit-norm, self_cols (2m,), weights (m, M) >= 0;
    optionally queue (Q, d) unit-norm and queue_weights (m, Q) >= 0."""
    m, big_m = weights.shape
    if columns.shape[0] != 2 * big_m or anchors.shape[0] != 2 * m:
        raise ValueError(f"weights {tuple(weights.shape)} need 2 x {m} anchors and 2 x {big_m} columns, got "
                         f"{anchors.shape[0]} and {columns.shape[0]}")
    logits = masked_logits(anchors, columns, self_cols, tau)
    w_self = weights.gather(1, (self_cols[:m] % big_m)[:, None]).squeeze(1).repeat(2)
    z = 2 * weights.sum(1).repeat(2) - w_self
    pulled = (weights @ (columns[:big_m] + columns[big_m:])).repeat(2, 1)  # sum_b w_ab (c_b + c_{M+b})
    if queue is not None:
        logits = torch.cat([logits, anchors @ queue.T / tau], dim=1)
        z = z + queue_weights.sum(1).repeat(2)
        pulled = pulled + (queue_weights @ queue).repeat(2, 1)
    lse = LogSumExp.apply(logits, other_view(self_cols, big_m))  # the other view's column is finite
    linear = ((anchors * pulled).sum(1) - w_self * (anchors * columns[self_cols]).sum(1)) / tau
    return (lse - linear / z).mean()
