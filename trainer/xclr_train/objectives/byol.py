"""BYOL: the online predictions regress the momentum network's projections of the other view
(`xclr_train.losses.byol`); no negatives."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from xclr_schemas.options import FRACTION, option
from xclr_train.losses.byol import byol_loss
from xclr_train.objectives.base import Objective, Options, Views


class BYOL(Objective):
    name = "byol"
    predictor = True

    @dataclass(frozen=True)
    class Args(Options):
        momentum: float = option(0.996, "Base EMA of the target network, rising to 1 on a cosine.", rule=FRACTION)

    @property
    def momentum(self) -> float:
        return self.args.momentum

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        return byol_loss(views.p1, views.p2, views.t1, views.t2), {}
