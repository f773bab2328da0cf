"""A few optimizer steps of the trainer's step (`xclr_train.step.Stepper`) on a fixed global batch, with or without
--micro-batch, in one process or as one rank of several (on two torchrun ranks in chunks of `CHUNK`: ddp_two_ranks.py);
tests/test_micro_batch.py compares the results.

Each rank takes its equal slice of the same global batch of M samples (uint8 crops, caption ids, labels, neighbour
rows, caption embeddings; `ddp_step.global_batch`; the "crop" recipe, whose photometric half only normalises, so that
the views do not depend on how the batch is split over ranks) and runs STEPS steps of SGD with momentum and gradient
clipping (plain SGD: Adam's first steps are about lr x sign(gradient), which would turn rounding noise in a near-zero
gradient into a whole step); `run` returns, for each case, the loss of every step (the mean over ranks), the parameter
gradients of the last step and the parameters after the last step (rank 0's). Cases (`CASES`):

  every registered objective with timm's test_vit backbone (patch 4 on 16 px) and the BatchNorm layers of the
  projection head and predictor in eval mode, in the learner and the target network: then no layer uses batch
  statistics and each sample's outputs depend on that sample alone
  "bn_xclr", "bn_byol": the small BatchNorm CNN (`convnet`) in training mode (batch statistics); on the CPU each rank
  normalises by its own batch (no SyncBatchNorm), as each chunk does with --micro-batch
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from ddp_step import GRAPH, SIZE, SPECS, K, M, global_batch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from train_helpers import one_thread

from xclr_train.augment import RECIPES, draw_photometric
from xclr_train.distributed import all_reduce_sum
from xclr_train.models import Encoder, ModelConfig
from xclr_train.objectives import OBJECTIVES, make_objective
from xclr_train.step import Stepper

STEPS, PROJ, LR, CLIP = 3, 16, 0.05, 1.0
CHUNK = 2  # --micro-batch of the chunked runs: 4 chunks of the 8-sample batch in one process, 2 on each of two ranks
RECIPE = RECIPES["crop"]
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Case:
    loss: str
    options: dict
    arch: str
    batch_stats: bool  # BatchNorm layers in training mode
    dropout: float = 0.0  # the probability of every Dropout layer of the learner


CASES = {name: Case(name, SPECS[name][1] if name in SPECS else {}, "test_vit", False) for name in OBJECTIVES}
CASES["bn_xclr"] = Case("xclr", {}, "convnet", True)
CASES["bn_byol"] = Case("byol", {"momentum": 0.99}, "convnet", True)


def crops() -> dict:
    """The global batch: uint8 crops [view 1; view 2] with the rest of `ddp_step.global_batch` (its float views left
    out)."""
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (2 * M, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return {"images": images} | {k: v for k, v in global_batch().items() if k not in ("view1", "view2")}


def rank_slice(x: torch.Tensor, rank: int, world: int, views: bool) -> torch.Tensor:
    """Rank `rank`'s rows of a global tensor: its m samples, or of a views-major one [view 1; view 2] its 2m rows."""
    m = M // world
    if not views:
        return x[rank * m:(rank + 1) * m]
    return torch.cat([x[rank * m:(rank + 1) * m], x[M + rank * m:M + (rank + 1) * m]])


def stepper(case: Case, world: int, micro_batch: int | None, scaler: torch.amp.GradScaler | None = None) -> Stepper:
    """The learner, objective and optimizer of `case` (seeded alike in every call) in a Stepper."""
    torch.manual_seed(0)
    objective = make_objective(case.loss, case.options, GRAPH)
    config = ModelConfig(case.arch, SIZE, 32, PROJ, 4 if case.arch == "test_vit" else None)
    learner = objective.build(Encoder(config), PROJ, 32, K, 0, torch.device("cpu"), world)
    if not case.batch_stats:
        for module in [*learner.modules(), *(objective.target.modules() if objective.target else [])]:
            if isinstance(module, BATCH_NORMS):
                module.eval()
    for module in learner.modules():
        if isinstance(module, nn.Dropout):
            module.p = case.dropout
    net = DistributedDataParallel(learner) if world > 1 else learner
    return Stepper(objective, net, torch.optim.SGD(learner.parameters(), LR, momentum=0.9),
                   scaler or torch.amp.GradScaler("cpu", enabled=False), torch.autocast("cpu", enabled=False),
                   RECIPE, CLIP, dist.get_rank() if world > 1 else 0, micro_batch)


def train_case(case: Case, world: int, micro_batch: int | None, scaler: torch.amp.GradScaler | None = None) -> dict:
    """STEPS steps of `case` on this rank's share of the global batch (see the module docstring), on one thread."""
    with one_thread():
        return _train(case, world, micro_batch, scaler)


def _train(case: Case, world: int, micro_batch: int | None, scaler: torch.amp.GradScaler | None) -> dict:
    s = stepper(case, world, micro_batch, scaler)
    rank = s.rank
    data = crops()
    images = rank_slice(data.pop("images"), rank, world, views=True)
    params = draw_photometric(len(images), RECIPE, torch.Generator())
    batch = {key: rank_slice(value, rank, world, views=False) for key, value in data.items()}
    losses = []
    for step in range(STEPS):
        loss, _ = s.step(images, params, batch, LR, step, STEPS)
        losses.append(all_reduce_sum(loss.detach()) / world)
    learner = s.objective.learner
    return {"loss": torch.stack(losses),
            "grads": {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None},
            "params": {n: p.detach().clone() for n, p in learner.named_parameters()},
            "buffers": {n: b.clone() for n, b in learner.named_buffers()},
            "target": {} if s.objective.target is None else s.objective.target.state_dict(),
            "queue": {} if s.objective.queue is None else s.objective.queue.entries()}


def run(world: int, micro_batch: int | None) -> dict:
    return {name: train_case(case, world, micro_batch) for name, case in CASES.items()}
