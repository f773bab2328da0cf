"""What a loss keeps besides the encoder: a predictor head (byol, nnclr), a momentum target network (moco, byol)
and a queue (moco's negatives, nnclr's support set, X-CLR's past projections).

Target network: a copy of the encoder, updated after every optimizer step as an exponential moving average with
BYOL's schedule (also MoCo v3's)

    theta_t <- mu theta_t + (1 - mu) theta_online,    mu = 1 - (1 - base) (cos(pi step / total) + 1) / 2

It runs in training mode, so its BatchNorm uses the batch's statistics (SyncBatchNorm on several GPUs, as MoCo v3
and BYOL do, instead of MoCo v2's shuffled BatchNorm).

Queue: after every step each rank pushes the same entries, the global batch's view-1 entries in rank order (all
gathered without gradient): moco the normalised target projections, nnclr and xclr the normalised online
projections, xclr also their caption ids and neighbour rows. It keeps the last `size`. MoCo's and NNCLR's queues
start full of random unit vectors (seeded by --seed, as MoCo does); X-CLR's starts empty, since a random entry has
no caption. Everything here is in the checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xclr_train.distributed import gather
from xclr_train.models import Encoder, use_sync_batchnorm
from xclr_train.objective import LossSpec, Views

PREDICTOR = ("byol", "nnclr")
TARGET = ("moco", "byol")


class Learner(nn.Module):
    """What the optimizer trains and DDP wraps: the encoder and, for byol and nnclr, a predictor head
    Linear-BN-ReLU-Linear (proj_dim -> hidden -> proj_dim). forward(images) -> (projections, predictions or None)."""

    def __init__(self, encoder: Encoder, proj_dim: int, predictor_hidden: int | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = None if predictor_hidden is None else nn.Sequential(
            nn.Linear(proj_dim, predictor_hidden, bias=False), nn.BatchNorm1d(predictor_hidden),
            nn.ReLU(inplace=True), nn.Linear(predictor_hidden, proj_dim))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        z = self.encoder(images)
        return z, None if self.predictor is None else self.predictor(z)


def momentum_at(step: int, total: int, base: float) -> float:
    """mu above: `base` at step 0, rising to 1 at `total`."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, mu: float) -> None:
    """theta_t <- mu theta_t + (1 - mu) theta_online for every parameter (buffers are the target's own)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(mu).add_(o.detach(), alpha=1 - mu)


class Queue:
    """First in, first out: the last `size` entries of a few named tensors (first dimension = entries)."""

    def __init__(self, size: int, fields: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 device: torch.device) -> None:
        if size < 1:
            raise ValueError(f"a queue needs at least one entry, got --queue-size {size}")
        self.size, self.filled, self.next = size, 0, 0
        self.data = {name: torch.zeros((size, *shape), dtype=dtype, device=device)
                     for name, (shape, dtype) in fields.items()}

    def push(self, entries: dict[str, Tensor]) -> None:
        """Append equal-length entries, overwriting the oldest."""
        n = min(len(next(iter(entries.values()))), self.size)
        slots = (self.next + torch.arange(n)) % self.size
        for name, value in entries.items():
            self.data[name][slots.to(value.device)] = value[-n:].to(self.data[name].dtype)
        self.next, self.filled = (self.next + n) % self.size, min(self.size, self.filled + n)

    def entries(self) -> dict[str, Tensor]:
        """The filled entries (in slot order, not age order: the losses do not depend on the order)."""
        return {name: value[:self.filled] for name, value in self.data.items()}

    def state_dict(self) -> dict:
        return {"filled": self.filled, "next": self.next, "data": self.data}

    def load_state_dict(self, state: dict) -> None:
        self.filled, self.next = state["filled"], state["next"]
        for name, value in state["data"].items():
            self.data[name].copy_(value)


class Method:
    """The learner, the target network and the queue of one loss, and what happens to them around a step."""

    def __init__(self, spec: LossSpec, encoder: Encoder, proj_dim: int, proj_hidden: int, k: int | None,
                 seed: int, device: torch.device, world_size: int) -> None:
        self.spec = spec
        learner = Learner(encoder, proj_dim, proj_hidden if spec.name in PREDICTOR else None)
        self.learner = use_sync_batchnorm(learner, device, world_size).to(device)
        if device.type == "cuda":
            self.learner = self.learner.to(memory_format=torch.channels_last)
        self.target = copy.deepcopy(self.learner.encoder).requires_grad_(False) if spec.name in TARGET else None
        self.queue = None
        if spec.name in ("moco", "nnclr"):
            self.queue = Queue(spec.queue_size, {"z": ((proj_dim,), torch.float32)}, device)
            random = torch.randn(spec.queue_size, proj_dim, generator=torch.Generator().manual_seed(seed))
            self.queue.push({"z": F.normalize(random, dim=1).to(device)})
        elif spec.name == "xclr" and spec.queue_size:
            self.queue = Queue(spec.queue_size, {"z": ((proj_dim,), torch.float32), "caption_id": ((), torch.long),
                                                 "nbr_id": ((k,), torch.long), "nbr_sim": ((k,), torch.float32)},
                               device)

    def views(self, net: nn.Module, images: Tensor) -> Views:
        """The rank's outputs for images = [view 1; view 2]; `net` is the learner, DDP-wrapped or not."""
        z, p = net(images)
        z1, z2 = z.chunk(2)
        views = Views(z1, z2)
        if p is not None:
            views.p1, views.p2 = p.chunk(2)
        if self.target is not None:
            with torch.no_grad():
                views.t1, views.t2 = self.target(images).chunk(2)
        return views

    def queue_entries(self) -> dict[str, Tensor] | None:
        return None if self.queue is None else self.queue.entries()

    @torch.no_grad()
    def after_step(self, views: Views, batch: dict, step: int, total: int) -> None:
        """After the optimizer step `step` (counted from 1) of `total`: move the target, push the batch."""
        if self.target is not None:
            ema_update(self.target, self.learner.encoder, momentum_at(step, total, self.spec.momentum))
        if self.queue is None:
            return
        source = views.t1 if self.spec.name == "moco" else views.z1
        entries = {"z": F.normalize(gather(source.detach().float().contiguous()), dim=1)}
        if self.spec.name == "xclr":
            entries.update({key: gather(batch[key]) for key in ("caption_id", "nbr_id", "nbr_sim")})
        self.queue.push(entries)

    def state_dict(self) -> dict:
        state = {}
        if self.learner.predictor is not None:
            state["predictor"] = self.learner.predictor.state_dict()
        if self.target is not None:
            state["target"] = self.target.state_dict()
        if self.queue is not None:
            state["queue"] = self.queue.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.learner.predictor is not None:
            self.learner.predictor.load_state_dict(state["predictor"])
        if self.target is not None:
            self.target.load_state_dict(state["target"])
        if self.queue is not None:
            self.queue.load_state_dict(state["queue"])
