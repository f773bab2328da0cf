"""Multi-class N-pair loss (Sohn 2016) over the two views, on unnormalised projections f.

Anchor i's positive is its sample's other view; its negatives are the *other view* of every sample with another
caption id / label / graph component (P of `xclr_train.losses.pairs` is 0), the N-pair batch construction with
both views taking the anchor role:

    l_i  = log(1 + sum_{n in N(i)} exp(f_i . f_n - f_i . f_pos(i))),   N(i) = {views of the other kind, P = 0}
    loss = mean_i l_i + L2 * mean_i ||f_i||^2,   L2 = 0.002

Sohn keeps the embeddings small with the L2 penalty instead of normalising them; there is no temperature.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xclr_train.losses.soft import other_view

L2 = 0.002


def npair_rows(anchors: Tensor, columns: Tensor, self_cols: Tensor, positives: Tensor) -> Tensor:
    """The loss above for n anchors (unnormalised, (2m, d)) against the 2M unnormalised columns."""
    big_m = columns.shape[0] // 2
    other = other_view(self_cols, big_m)
    logits = anchors @ columns.T
    first_view = self_cols[:, None] < big_m
    column_view = torch.arange(2 * big_m, device=anchors.device)[None, :] >= big_m
    candidates = (first_view == column_view) & ~positives.repeat(2, 2)  # other-view columns of unrelated samples
    diff = logits - logits.gather(1, other[:, None])
    # log(1 + sum exp(diff)) = logsumexp over {0} and the negatives' diffs
    terms = torch.cat([torch.zeros_like(diff[:, :1]), diff.masked_fill(~candidates, float("-inf"))], dim=1)
    return torch.logsumexp(terms, dim=1).mean() + L2 * anchors.float().square().sum(1).mean()


def npair_loss(z1: Tensor, z2: Tensor, positives: Tensor) -> Tensor:
    """N-pair loss of one global batch: z1, z2 (M, d) unnormalised, positives (M, M) bool."""
    z = torch.cat([z1, z2]).float()
    return npair_rows(z, z, torch.arange(z.shape[0], device=z.device), positives)
