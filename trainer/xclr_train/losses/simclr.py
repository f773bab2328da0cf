"""SimCLR's NT-Xent (Chen et al. 2020): the other view of the same sample is the one positive.

    loss = mean_i  - log softmax_{j != i}(z_i . z_j / tau)_{pos(i)},   pos(i) = i + M mod 2M
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xclr_train.losses.soft import masked_logits, other_view


def nt_xent_rows(anchors: Tensor, columns: Tensor, self_cols: Tensor, tau: float) -> Tensor:
    """NT-Xent of n anchors against the 2M views-major columns (see `xclr_train.losses.soft`)."""
    return F.cross_entropy(masked_logits(anchors, columns, self_cols, tau), other_view(self_cols, len(columns) // 2))


def nt_xent_loss(z1: Tensor, z2: Tensor, tau: float = 0.1) -> Tensor:
    """NT-Xent of one global batch: z1, z2 (M, d) projections of the two views (normalised here)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    return nt_xent_rows(z, z, torch.arange(z.shape[0], device=z.device), tau)
