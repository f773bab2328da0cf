"""Triplet margin loss with in-batch mining (Schroff et al. 2015; batch-hard after Hermans et al. 2017).

d is the Euclidean distance between unit-norm views; pos/neg are the view masks of `xclr_train.losses.pairs`.

    hardest:   l_i = max(0, max_{p in pos(i)} d_ip - min_{n in neg(i)} d_in + margin)
    semihard:  l_i = mean_{p in pos(i)} max(0, d_ip - d_in(p) + margin),
               n(p) = argmin {d_in : n in neg(i), d_in > d_ip}, or argmax_{n in neg(i)} d_in when no negative is
               farther than p (FaceNet's semi-hard choice, as TensorFlow's triplet_semihard_loss makes it)
    loss = mean_i l_i;   an anchor without negatives has l_i = 0

Semi-hard averages per anchor, then over anchors, so every rank's mean over its equally many anchors averages to
the whole-batch value under DDP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xclr_train.losses.pairs import distances, view_masks

MINING = ("hardest", "semihard")


def triplet_rows(anchors: Tensor, columns: Tensor, self_cols: Tensor, positives: Tensor, margin: float,
                 mining: str) -> Tensor:
    """The loss above for n anchors against the 2M unit-norm columns; positives (m, M) bool."""
    pos, neg = view_masks(positives, self_cols)
    d = distances(anchors, columns)
    has_neg = neg.any(1)
    if mining == "hardest":
        d_ap = d.masked_fill(~pos, float("-inf")).amax(1)
        d_an = d.masked_fill(~neg, float("inf")).amin(1)
        per_anchor = F.relu(d_ap - d_an + margin)
    elif mining == "semihard":
        is_neg = neg[:, None, :]  # (n, 1, 2M) against every positive p: (n, 2M, 1)
        farther = d[:, None, :].masked_fill(~(is_neg & (d[:, None, :] > d[:, :, None])), float("inf")).amin(2)
        farthest = d.masked_fill(~neg, float("-inf")).amax(1, keepdim=True)
        d_an = torch.where(torch.isinf(farther), farthest, farther)  # (n, 2M): the negative chosen for p
        hinge = F.relu(d - d_an + margin).where(pos & has_neg[:, None], torch.zeros((), device=d.device))
        per_anchor = hinge.sum(1) / pos.sum(1)
    else:
        raise ValueError(f"unknown mining {mining!r}; choose from {', '.join(MINING)}")
    return per_anchor.where(has_neg, torch.zeros((), device=d.device)).mean()


def triplet_loss(z1: Tensor, z2: Tensor, positives: Tensor, margin: float = 0.2, mining: str = "hardest") -> Tensor:
    """Triplet loss of one global batch: z1, z2 (M, d) (normalised here), positives (M, M) bool, sample level."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    return triplet_rows(z, z, torch.arange(z.shape[0], device=z.device), positives, margin, mining)
