"""SupCon: every view of a positive sample is a target, with equal weight (`xclr_train.losses.supcon`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from xclr_train.objectives.base import Columns, SoftTargets, TauArgs
from xclr_train.objectives.positives import PairObjective, PositivesArgs


class SupCon(SoftTargets, PairObjective):
    name = "supcon"

    @dataclass(frozen=True)
    class Args(TauArgs, PositivesArgs):  # fields: positives, tau
        pass

    def weights(self, batch: dict, c: Columns) -> Tensor:
        return self.positive_rows(batch, c.caption_ids, c.own).float()
