"""One training step: the one `xclr-train` runs (`xclr_train.train`) and benchmarks/bench_train.py times.

    images (uint8 crops [view 1; view 2] on the device) -> the photometric half of the augmentation
    -> the objective's views of them (the learner under autocast; its predictor and target network)
    -> the objective's loss for this rank -> backward (through the grad scaler) -> clipping -> optimizer step
    -> the objective's after-step update (target network EMA, queue push)

With `micro_batch` N the forward, loss and backward are GradCache's two passes over chunks of N samples
(`xclr_train.micro_batch`): the loss still sees the whole global batch, the activations kept for the backward are one
chunk's. Everything before the network (the photometric draws) and after the backward is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from xclr_train.augment import Recipe
from xclr_train.micro_batch import CachedGradients, RandomState, buffers_kept, detached, join, leaves, sample_chunks
from xclr_train.objectives import Objective, Views
from xclr_train.photometric import photometric


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Computed:
    """A step's forward, loss and backward: the loss, the objective's statistics and the views after_step gets."""
    loss: Tensor
    stats: dict[str, Tensor]
    views: Views


@dataclass
class Stepper:
    """What a step uses: the objective (with its learner, target network, queue and gathers), `net` (the learner,
    DDP-wrapped on several ranks), the optimizer, the grad scaler (enabled for fp16 only), the autocast context of
    the forward pass, the recipe of the photometric half, the largest gradient norm (0: no clipping), this
    process's rank and the samples per chunk of the two-pass step (None: the whole batch in one pass)."""
    objective: Objective
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: AbstractContextManager
    recipe: Recipe
    clip_grad: float
    rank: int
    micro_batch: int | None = None

    def step(self, images: Tensor, params: Tensor, batch: dict, lr: float, step: int, total: int,
             mark: Callable[[], None] = _nothing) -> tuple[Tensor, dict[str, Tensor]]:
        """Optimizer step `step` (counted from 0) of `total` at learning rate `lr`, on the views `images` with their
        photometric parameters `params` (`augment.draw_photometric`) and the rest of the rank's `batch`; returns the
        loss and the objective's statistics (with "grad_norm", the norm before clipping, when it clips). `mark` is
        called after each phase: photometric, forward, loss, backward, optimizer step (with `micro_batch`: pass 1,
        the loss and its gradient with respect to the outputs, pass 2)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = photometric(images, params.to(images.device, non_blocking=True), self.recipe)
        if images.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        mark()
        self.optimizer.zero_grad(set_to_none=True)
        done = self._whole(images, batch, mark) if self.micro_batch is None else self._two_pass(images, batch, mark)
        stats = done.stats
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            stats = {**stats, "grad_norm": nn.utils.clip_grad_norm_(self.net.parameters(), self.clip_grad)}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.objective.after_step(done.views, batch, step + 1, total)
        mark()
        return done.loss, stats

    def _whole(self, images: Tensor, batch: dict, mark: Callable[[], None]) -> Computed:
        with self.autocast:
            views = self.objective.views(self.net, images)
        mark()
        loss, stats = self.objective.rows(views, batch, self.rank)
        mark()
        self.scaler.scale(loss).backward()
        mark()
        return Computed(loss, stats, views)

    def _two_pass(self, images: Tensor, batch: dict, mark: Callable[[], None]) -> Computed:
        """GradCache's passes (`xclr_train.micro_batch`); under DDP only the last chunk's backward reduces."""
        chunks, states, parts = sample_chunks(images, self.micro_batch), [], []
        with torch.no_grad(), buffers_kept(self.net):
            for chunk in chunks:
                states.append(RandomState.now(images.device))
                with self.autocast:
                    parts.append(self.objective.views(self.net, chunk))
        views = leaves(join(parts))
        mark()
        loss, stats = self.objective.rows(views, batch, self.rank)
        cached = CachedGradients.of(self.scaler.scale(loss), views, self.objective.learner.scalars, self.micro_batch)
        mark()
        for c, (chunk, state) in enumerate(zip(chunks, states)):
            last = c == len(chunks) - 1
            ddp = isinstance(self.net, DistributedDataParallel)
            with self.net.no_sync() if ddp and not last else nullcontext(), state.replay():
                with self.autocast:
                    outputs = self.objective.online_views(self.net, chunk)
                cached.backward(c, outputs, last)
        mark()
        return Computed(loss.detach(), stats, detached(views))
