"""The two-rank side of the 1-vs-2-process tests in one torchrun launch (`ddp_two_ranks.py OUT`, two ranks over
gloo): ddp_step's step of every loss, then ddp_micro's steps in chunks of `ddp_micro.CHUNK`; rank 0 saves
{"step": ddp_step.results, "micro": ddp_micro.run} to OUT. One launch for both: a torchrun start (interpreters,
imports, rendezvous) costs seconds. The session fixture `two_ranks` (conftest.py) runs it."""

import sys

import ddp_micro
import ddp_step
import torch
import torch.distributed as dist

from xclr_train.distributed import init_distributed


def main(out: str) -> None:
    d = init_distributed("cpu", rank_timeout=300)
    both = {"step": ddp_step.results(d), "micro": ddp_micro.run(d.world_size, ddp_micro.CHUNK)}
    if d.rank == 0:
        torch.save(both, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
