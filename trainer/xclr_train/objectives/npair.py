"""The N-pair loss on unnormalised projections (`xclr_train.losses.npair`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from xclr_train.losses.npair import npair_rows
from xclr_train.objectives.base import Columns
from xclr_train.objectives.positives import PairObjective, PositivesArgs


class NPair(PairObjective):
    name = "npair"
    normalize = False

    @dataclass(frozen=True)
    class Args(PositivesArgs):
        pass

    def pair_loss(self, c: Columns, positives: Tensor) -> Tensor:
        return npair_rows(c.anchors, c.columns, c.self_cols, positives)
