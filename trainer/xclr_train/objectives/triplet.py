"""Triplet loss with in-batch mining on distances between unit vectors (`xclr_train.losses.triplet`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from xclr_schemas.options import POSITIVE, option
from xclr_train.losses.triplet import MINING, triplet_rows
from xclr_train.objectives.base import Columns
from xclr_train.objectives.positives import PairObjective, PositivesArgs


class Triplet(PairObjective):
    name = "triplet"

    @dataclass(frozen=True)
    class Args(PositivesArgs):
        margin: float = option(0.2, "Margin on distances between unit vectors (0 to 2).", rule=POSITIVE)
        mining: str = option("hardest", "In-batch hardest positive and negative, or FaceNet's semi-hard negatives.",
                             MINING)

    def pair_loss(self, c: Columns, positives: Tensor) -> Tensor:
        return triplet_rows(c.anchors, c.columns, c.self_cols, positives, self.args.margin, self.args.mining)
