"""BYOL's regression loss (Grill et al. 2020): the online prediction of one view regresses the target network's
projection of the other view; no negatives.

    l(p, t) = || p / ||p|| - t / ||t|| ||^2 = 2 - 2 cos(p, t)
    loss    = mean over the samples of (l(p1, t2) + l(p2, t1)) / 2,   t without gradient

The target network is an exponential moving average of the online encoder (`xclr_train.objectives.state`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def byol_loss(p1: Tensor, p2: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
    """The loss above; p1, p2 online predictions and t1, t2 target projections, (M, d) each."""
    def regress(p: Tensor, t: Tensor) -> Tensor:
        return 2 - 2 * F.cosine_similarity(p.float(), t.detach().float(), dim=1)
    return (regress(p1, t2).mean() + regress(p2, t1).mean()) / 2
