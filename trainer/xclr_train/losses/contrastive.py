"""The margin-based pairwise contrastive loss (Hadsell, Chopra and LeCun 2006) on unit-norm views.

d is the Euclidean distance; pos/neg are the view masks of `xclr_train.losses.pairs`:

    l_i  = mean_{p in pos(i)} d_ip^2 + mean_{n in neg(i)} max(0, margin - d_in)^2     (an empty mean is 0)
    loss = mean_i l_i

Averaging positives and negatives separately per anchor keeps the one positive view from being outweighed by the
2M - 2 negatives (pytorch-metric-learning averages the two terms the same way).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xclr_train.losses.pairs import distances, view_masks


def contrastive_rows(anchors: Tensor, columns: Tensor, self_cols: Tensor, positives: Tensor, margin: float) -> Tensor:
    """The loss above for n anchors against the 2M unit-norm columns; positives (m, M) bool."""
    pos, neg = view_masks(positives, self_cols)
    d = distances(anchors, columns)
    zero = torch.zeros((), device=d.device)
    pulled = d.square().where(pos, zero).sum(1) / pos.sum(1).clamp(min=1)
    pushed = F.relu(margin - d).square().where(neg, zero).sum(1) / neg.sum(1).clamp(min=1)
    return (pulled + pushed).mean()


def contrastive_loss(z1: Tensor, z2: Tensor, positives: Tensor, margin: float = 1.0) -> Tensor:
    """Contrastive loss of one global batch: z1, z2 (M, d) (normalised here), positives (M, M) bool."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    return contrastive_rows(z, z, torch.arange(z.shape[0], device=z.device), positives, margin)
