"""One training step: the one `xclr-train` runs (`xclr_train.train`) and benchmarks/bench_train.py times.

    images (uint8 crops [view 1; view 2] on the device) -> the photometric half of the augmentation
    -> the objective's views of them (the learner under autocast; its predictor and target network)
    -> the objective's loss for this rank -> backward (through the grad scaler) -> clipping -> optimizer step
    -> the objective's after-step update (target network EMA, queue push)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xclr_train.augment import Recipe
from xclr_train.objectives import Objective
from xclr_train.photometric import photometric


def _nothing() -> None:
    pass


@dataclass
class Stepper:
    """What a step uses: the objective (with its learner, target network, queue and gathers), `net` (the learner,
    DDP-wrapped on several ranks), the optimizer, the grad scaler (enabled for fp16 only), the autocast context of
    the forward pass, the recipe of the photometric half, the largest gradient norm (0: no clipping) and this
    process's rank."""
    objective: Objective
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: AbstractContextManager
    recipe: Recipe
    clip_grad: float
    rank: int

    def step(self, images: Tensor, params: Tensor, batch: dict, lr: float, step: int, total: int,
             mark: Callable[[], None] = _nothing) -> tuple[Tensor, dict[str, Tensor]]:
        """Optimizer step `step` (counted from 0) of `total` at learning rate `lr`, on the views `images` with their
        photometric parameters `params` (`augment.draw_photometric`) and the rest of the rank's `batch`; returns the
        loss and the objective's statistics (with "grad_norm", the norm before clipping, when it clips). `mark` is
        called after each phase: photometric, forward, loss, backward, optimizer step."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = photometric(images, params.to(images.device, non_blocking=True), self.recipe)
        if images.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        mark()
        with self.autocast:
            views = self.objective.views(self.net, images)
        mark()
        loss, stats = self.objective.rows(views, batch, self.rank)
        mark()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        mark()
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            stats = {**stats, "grad_norm": nn.utils.clip_grad_norm_(self.net.parameters(), self.clip_grad)}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.objective.after_step(views, batch, step + 1, total)
        mark()
        return loss, stats
