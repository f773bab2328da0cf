"""SimCLR's NT-Xent: each view's positive is the other view of its sample (`xclr_train.losses.simclr`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from xclr_train.losses.simclr import nt_xent_rows
from xclr_train.objectives.base import Columns, SoftTargets, TauArgs


class SimCLR(SoftTargets):
    name = "simclr"

    @dataclass(frozen=True)
    class Args(TauArgs):
        pass

    def weights(self, batch: dict, c: Columns) -> Tensor:
        """1 for the sample itself, else 0."""
        return (c.own[:, None] == torch.arange(c.big_m, device=c.own.device)[None, :]).float()

    def loss(self, c: Columns, weights: Tensor) -> Tensor:
        """The soft-target loss of these weights, as NT-Xent computes it."""
        return nt_xent_rows(c.anchors, c.columns, c.self_cols, self.args.tau)
