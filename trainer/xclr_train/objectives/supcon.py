"""SupCon: every view of a positive sample is a target, with equal weight (`xclr_train.losses.supcon`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from xclr_train.losses.soft import soft_contrastive
from xclr_train.objectives.base import Views, target_stats, tau_option
from xclr_train.objectives.positives import PairObjective, PositivesArgs


class SupCon(PairObjective):
    name = "supcon"

    @dataclass(frozen=True)
    class Args(PositivesArgs):
        tau: float = tau_option()

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.columns(views, batch, rank)
        weights = self.positive_rows(batch, c.caption_ids, c.own).float()
        loss = soft_contrastive(c.anchors, c.columns, c.self_cols, weights, self.args.tau)
        return loss, target_stats(weights, c.own, batch["caption_id"], c.caption_ids, c.big_m)
