"""What a checkpoint written inside an epoch (at a preemption, `xclr_train.preemption`) holds beyond the weights, so
that the resumed run goes on bit for bit: each rank's place in its data stream and its open metrics window.

In the checkpoint, "inside" is None at an epoch's end, else one plain dict per rank (torch's weights_only loader
reads it)::

    {"batches": batches of the epoch done, "workers": DataLoader streams of the rank (max(1, --workers)),
     "positions": {worker: [taken, *skip counts in data.REASONS order]},
     "window_steps": steps in the open metrics window, "window_sums": {metric: 0-d tensor summed over them},
     "window_seconds", "window_data_time": the window's wall time so far and the part spent waiting for data}

A resume must keep --workers (each worker is a stream of its own); `xclr_train.train` refuses another count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from xclr_train.data import EpochStart, Position
from xclr_train.distributed import Dist


@dataclass(frozen=True)
class InsideEpoch:
    """One rank's share: where its stream starts again (`data.EpochStart`), over how many worker streams, and the
    metrics window's steps, sums, seconds and data-wait seconds."""
    start: EpochStart
    workers: int
    window_steps: int
    window_sums: dict[str, Tensor]
    window_seconds: float
    window_data_time: float

    def to_state(self) -> dict:
        return {"batches": self.start.batches, "workers": self.workers,
                "positions": {w: [p.taken, *p.skipped] for w, p in self.start.positions.items()},
                "window_steps": self.window_steps,
                "window_sums": {name: value.detach().cpu() for name, value in self.window_sums.items()},
                "window_seconds": self.window_seconds, "window_data_time": self.window_data_time}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> InsideEpoch:
        positions = {int(w): Position(p[0], tuple(p[1:])) for w, p in state["positions"].items()}
        return cls(EpochStart(state["batches"], positions), state["workers"], state["window_steps"],
                   {name: value.to(device) for name, value in state["window_sums"].items()}, state["window_seconds"],
                   state["window_data_time"])


def gather_states(mine: InsideEpoch, d: Dist) -> list[dict]:
    """Every rank's `to_state()`, in rank order (a collective: every rank calls it)."""
    if d.world_size == 1:
        return [mine.to_state()]
    states: list[dict | None] = [None] * d.world_size
    dist.all_gather_object(states, mine.to_state(), group=d.cpu_group)
    return states
