"""Process group set-up under torchrun, the bound on every wait for another rank, and the gathers the losses need.

**Rank timeout** (`--rank-timeout`; docs/cluster.md, Fault injection): every wait of one rank for the others is
bounded by the same number of seconds: the rendezvous (the store of `init_process_group`), every collective of the
main process group (gloo on the CPU; NCCL on GPUs, whose watchdog ends the process when a collective runs past it)
and of the gloo group for CPU-side agreements (`Dist.cpu_group`, `any_rank`). A rank that stops answering (SIGSTOP,
a deadlock, a node gone without closing its sockets) then makes the others fail within that bound instead of
hanging: on gloo the waiting collective raises, which `rank_timeouts` turns into `RankTimeout`, one line; the rank
exits, and torchrun (`--max-restarts`) stops the group and restarts it, which resumes from latest.pt. So whatever
one rank does alone while the others wait in a collective must take less time: above all the main rank's checkpoint
write and upload. The in-run evaluation does not count: the others wait for it on a group of their own
(`xclr_train.in_run_eval`).

`gather_with_grad` is the all-gather whose backward all-reduces (sums) the incoming gradient and keeps this rank's
slice: each rank's loss depends on every rank's projections through the gathered columns, so the gradient of a
rank's projections is the sum over ranks. DDP then averages parameter gradients over ranks, which together gives
the gradient of the mean over ranks of the local losses (open_clip's "local loss"; a plain `dist.all_gather`
returns tensors without gradient and silently trains on the local columns only).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from xclr_train.errors import TrainError, first_line

# TORCH_NCCL_ASYNC_ERROR_HANDLING=3: NCCL's watchdog tears the process down when a collective fails or runs past the
# timeout (without ncclCommAbort, which can hang itself); 0 would leave the rank waiting forever. torch's documented
# default, set where the environment does not choose, so that the rule does not depend on torch's default.
NCCL_TEAR_DOWN = "3"
# How torch words a wait that ran out: gloo ("Timed out waiting <N>ms for recv operation to complete", and
# "Application timeout caused pair closure" for an operation on a connection an earlier timeout closed), the
# rendezvous store ("Timed out after <N> seconds waiting for clients. 1/2 clients joined.")
_TIMED_OUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_SOURCE = re.compile(r"^\[[^\]]*\]\s*")  # gloo's "[.../unbound_buffer.cc:78] " before its message


@dataclass(frozen=True)
class Dist:
    """This process's place: its rank, the number of ranks, its rank on the node, its device, and a gloo group over
    all ranks for small CPU-side agreements (`any_rank`; the default group when it is gloo already)."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    cpu_group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str, rank_timeout: int) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU); else a single process.

    device: "auto" (CUDA when available), "cpu" or "cuda"; under torchrun each rank takes cuda:LOCAL_RANK.
    rank_timeout: the seconds any wait for another rank may last (module docstring): the rendezvous, every
    collective of the process group and of `cpu_group`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("--device cuda was asked for but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    timeout = timedelta(seconds=rank_timeout)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", NCCL_TEAR_DOWN)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timeout,
                                device_id=dev if dev.type == "cuda" else None)
    cpu_group = dist.new_group(backend="gloo", timeout=timeout) if world_size > 1 and dev.type == "cuda" else None
    return Dist(rank, world_size, local_rank, dev, cpu_group)


class RankTimeout(TrainError):
    """A wait for another rank ran past --rank-timeout: the message is the one line `xclr-train` prints."""


@contextmanager
def rank_timeouts(rank_timeout: int) -> Iterator[None]:
    """Around a run: torch's error for a wait that ran past `rank_timeout` seconds (a collective, the rendezvous)
    becomes RankTimeout, one line naming the option; other errors pass unchanged, among them those whose text only
    quotes a timeout further down (a DataLoader worker's traceback). (NCCL's watchdog ends the process itself, with
    torch's own message.)"""
    try:
        yield
    except RuntimeError as exc:  # gloo raises RuntimeError; the store, torch.distributed.DistError (a subclass)
        said = _SOURCE.sub("", first_line(exc))
        if not _TIMED_OUT.search(said):
            raise
        raise RankTimeout(f"another rank did not answer within --rank-timeout {rank_timeout} s (hung, stopped or "
                          f"unreachable; torch: {said}): torchrun --max-restarts restarts the group, which resumes "
                          "from latest.pt") from None


def any_rank(flag: bool, d: Dist) -> bool:
    """Whether `flag` holds on any rank: a max over ranks of one CPU integer (no device synchronisation)."""
    if d.world_size == 1:
        return flag
    x = torch.tensor([int(flag)])
    dist.all_reduce(x, op=dist.ReduceOp.MAX, group=d.cpu_group)
    return bool(x.item())


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenation over ranks (in rank order) of equal-shaped `x`, differentiable as explained above."""
    return x if _world() == 1 else _GatherWithGrad.apply(x)


def gather(x: Tensor) -> Tensor:
    """Concatenation over ranks of equal-shaped `x`, without gradient (caption ids, neighbour lists)."""
    if _world() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@dataclass(frozen=True)
class Gathers:
    """The two gathers an objective sees the global batch through (`xclr_train.objectives.base`): the process
    group's (`PROCESS_GROUP`), or a stand-in for other ranks (benchmarks/bench_train.py measures one rank's share of
    a global batch that way)."""
    gather: Callable[[Tensor], Tensor] = gather
    with_grad: Callable[[Tensor], Tensor] = gather_with_grad


PROCESS_GROUP = Gathers()


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum over ranks (a copy; `x` is left alone)."""
    x = x.clone()
    if _world() > 1:
        dist.all_reduce(x)
    return x
