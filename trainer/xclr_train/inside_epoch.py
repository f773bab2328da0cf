"""What a checkpoint written inside an epoch (at a preemption, `xclr_train.preemption`) holds beyond the weights, so
that the resumed run goes on bit for bit: each rank's place in its data stream and its open metrics window.

In the checkpoint, "inside" is None at an epoch's end, else one plain dict per rank (torch's weights_only loader
reads it)::

    {"batches": batches of the epoch done, "positions": {worker: [taken, *skip counts in data.REASONS order]},
     "window_steps": steps in the open metrics window, "window_sums": {metric: 0-d tensor summed over them}}
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
    """One rank's share: where its stream starts again (`data.EpochStart`) and the metrics window's steps and sums."""
    start: EpochStart
    window_steps: int
    window_sums: dict[str, Tensor]

    def to_state(self) -> dict:
        return {"batches": self.start.batches,
                "positions": {w: [p.taken, *p.skipped] for w, p in self.start.positions.items()},
                "window_steps": self.window_steps,
                "window_sums": {name: value.detach().cpu() for name, value in self.window_sums.items()}}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> InsideEpoch:
        positions = {int(w): Position(p[0], tuple(p[1:])) for w, p in state["positions"].items()}
        return cls(EpochStart(state["batches"], positions), state["window_steps"],
                   {name: value.to(device) for name, value in state["window_sums"].items()})


def gather_states(mine: InsideEpoch, d: Dist) -> list[dict]:
    """Every rank's `to_state()`, in rank order (a collective: every rank calls it)."""
    if d.world_size == 1:
        return [mine.to_state()]
    states: list[dict | None] = [None] * d.world_size
    dist.all_gather_object(states, mine.to_state(), group=d.cpu_group)
    return states
