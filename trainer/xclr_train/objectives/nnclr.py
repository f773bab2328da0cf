"""NNCLR: each view's positive is its nearest neighbour in a support set of past projections
(`xclr_train.losses.nnclr`). The support set starts full of random unit vectors (seeded by --seed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from xclr_schemas.options import POSITIVE, option
from xclr_train.losses.nnclr import nnclr_rows
from xclr_train.objectives.base import Objective, TauArgs, Views
from xclr_train.objectives.state import Queue, random_queue


class NNCLR(Objective):
    name = "nnclr"
    predictor = True

    @dataclass(frozen=True)
    class Args(TauArgs):
        queue_size: int = option(98304, "Support set, where each view's nearest neighbour is found: the projections of "
                                 "view 1 of the last queue-size samples (all ranks); random unit vectors at the "
                                 "start.", rule=POSITIVE)

    def make_queue(self, proj_dim: int, k: int | None, seed: int, device: torch.device) -> Queue:
        return random_queue(self.args.queue_size, proj_dim, seed, device)

    def queue_entries(self, views: Views, batch: dict) -> dict[str, Tensor]:
        return {"z": self.gathered_units(views.z1)}

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        n1, n2, p1, p2 = (F.normalize(x.float(), dim=1) for x in (views.z1, views.z2, views.p1, views.p2))
        own = rank * len(n1) + torch.arange(len(n1), device=n1.device)
        columns = self.gathers.with_grad(p1), self.gathers.with_grad(p2)
        return nnclr_rows(n1, n2, *columns, self.queue.entries()["z"], own, self.args.tau), {}
