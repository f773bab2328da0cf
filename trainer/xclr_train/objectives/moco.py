"""MoCo (v2 head, v3 momentum schedule): InfoNCE of the online projections against the momentum network's keys and
a queue of past keys (`xclr_train.losses.moco`). The queue starts full of random unit vectors (seeded by --seed,
as MoCo does)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from xclr_schemas.options import FRACTION, POSITIVE, option
from xclr_train.losses.moco import moco_loss
from xclr_train.objectives.base import Objective, TauArgs, Views
from xclr_train.objectives.state import Queue, random_queue


class MoCo(Objective):
    name = "moco"

    @dataclass(frozen=True)
    class Args(TauArgs):
        queue_size: int = option(65536, "Negatives: the momentum network's keys of view 1 of the last queue-size "
                                 "samples (all ranks); random unit vectors at the start.", rule=POSITIVE)
        momentum: float = option(0.99, "Base EMA of the target network, rising to 1 on a cosine.", rule=FRACTION)

    @property
    def momentum(self) -> float:
        return self.args.momentum

    def make_queue(self, proj_dim: int, k: int | None, seed: int, device: torch.device) -> Queue:
        return random_queue(self.args.queue_size, proj_dim, seed, device)

    def queue_entries(self, views: Views, batch: dict) -> dict[str, Tensor]:
        return {"z": self.gathered_units(views.t1)}

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sample terms: the rank's rows are the whole-batch formula."""
        return moco_loss(views.z1, views.z2, views.t1, views.t2, self.queue.entries()["z"], self.args.tau), {}
