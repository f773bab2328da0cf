"""NNCLR (Dwibedi et al. 2021): the nearest neighbour of a view's projection in a support queue stands in for it
as the positive of the other view's prediction.

z = normalised online projection, p = normalised prediction (predictor head on z), Q = support queue (unit-norm,
no gradient), NN(z) = argmax_{q in Q} z . q. With the global batch's predictions p^1 ... p^M of the other view:

    l_i(z, p) = - log softmax_b(NN(z_i) . p_b / tau)_i          b over the M samples of the global batch
    loss      = mean_i (l_i(z1, p2) + l_i(z2, p1)) / 2

A rank's rows are its samples against the gathered predictions, so rank means average to the whole-batch value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nearest(z: Tensor, support: Tensor) -> Tensor:
    """NN(z): the support row of highest dot product with each row of z, (n, d), without gradient."""
    return support[(z.detach() @ support.T).argmax(1)]


def nnclr_rows(z1: Tensor, z2: Tensor, p1_all: Tensor, p2_all: Tensor, support: Tensor, own: Tensor,
               tau: float) -> Tensor:
    """The loss for a rank's m samples: z1, z2 (m, d) its projections, p1_all, p2_all (M, d) the global batch's
    predictions, own (m,) its samples' indices in the global batch; all unit-norm."""
    first = F.cross_entropy(nearest(z1, support) @ p2_all.T / tau, own)
    second = F.cross_entropy(nearest(z2, support) @ p1_all.T / tau, own)
    return (first + second) / 2


def nnclr_loss(z1: Tensor, z2: Tensor, p1: Tensor, p2: Tensor, support: Tensor, tau: float = 0.1) -> Tensor:
    """NNCLR loss of one global batch: projections z1, z2 and predictions p1, p2 (M, d), normalised here."""
    z1, z2, p1, p2 = (F.normalize(x.float(), dim=1) for x in (z1, z2, p1, p2))
    return nnclr_rows(z1, z2, p1, p2, support, torch.arange(z1.shape[0], device=z1.device), tau)
