"""SimCLR's NT-Xent: each view's positive is the other view of its sample (`xclr_train.losses.simclr`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from xclr_train.losses.simclr import nt_xent_rows
from xclr_train.objectives.base import Objective, Options, Views, target_stats, tau_option


class SimCLR(Objective):
    name = "simclr"

    @dataclass(frozen=True)
    class Args(Options):
        tau: float = tau_option()

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.columns(views, batch, rank)
        loss = nt_xent_rows(c.anchors, c.columns, c.self_cols, self.args.tau)
        weights = (c.own[:, None] == torch.arange(c.big_m, device=c.own.device)[None, :]).float()
        return loss, target_stats(weights, c.own, batch["caption_id"], c.caption_ids, c.big_m)
