"""The state an objective may keep besides the learner (`xclr_train.objectives.base`): a momentum target network
(moco, byol) and a queue (moco's negatives, nnclr's support set, X-CLR's past projections). The predictor head
(byol, nnclr) is part of the learner (`xclr_train.models.Learner`).

Target network: a copy of the encoder, updated after every optimizer step as an exponential moving average with
BYOL's schedule (also MoCo v3's)

    theta_t <- mu theta_t + (1 - mu) theta_online,    mu = 1 - (1 - base) (cos(pi step / total) + 1) / 2

It runs in training mode, so its BatchNorm uses the batch's statistics (SyncBatchNorm on several GPUs, as MoCo v3
and BYOL do, instead of MoCo v2's shuffled BatchNorm).

Queue: after every step each rank pushes the same entries, the global batch's view-1 entries in rank order (all
gathered without gradient; what they are is the objective's `queue_entries`). It keeps the last `size`. Everything
here is in the checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def random_queue(size: int, dim: int, seed: int, device: torch.device) -> Queue:
    """A queue of `size` unit vectors, full from the start (MoCo's negatives, NNCLR's support set)."""
    queue = Queue(size, {"z": ((dim,), torch.float32)}, device)
    random = torch.randn(size, dim, generator=torch.Generator().manual_seed(seed))
    queue.push({"z": F.normalize(random, dim=1).to(device)})
    return queue
