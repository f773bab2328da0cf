"""The margin contrastive loss on distances between unit vectors (`xclr_train.losses.contrastive`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from xclr_schemas.options import POSITIVE, option
from xclr_train.losses.contrastive import contrastive_rows
from xclr_train.objectives.base import Columns
from xclr_train.objectives.positives import PairObjective, PositivesArgs


class Contrastive(PairObjective):
    name = "contrastive"

    @dataclass(frozen=True)
    class Args(PositivesArgs):
        margin: float = option(1.0, "Margin on distances between unit vectors (0 to 2).", rule=POSITIVE)

    def pair_loss(self, c: Columns, positives: Tensor) -> Tensor:
        return contrastive_rows(c.anchors, c.columns, c.self_cols, positives, self.args.margin)
