"""One training step of every loss on a fixed global batch, for the 1-vs-2-process test (run under torchrun).

Each rank takes its equal slice of the same 8-sample global batch, runs the trainer's model (DDP when there are
two ranks), `objective` and backward, and rank 0 saves the mean loss over ranks and the parameter gradients to
the file named by argv[1]. BatchNorm runs in eval mode: torch has no CPU SyncBatchNorm, and per-rank batch
statistics would differ from whole-batch ones by design, not by a bug in the loss.
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from xclr_train.distributed import all_reduce_sum, init_distributed
from xclr_train.models import Encoder
from xclr_train.objective import LossSpec, objective

M, K, SIZE = 8, 3, 16
SPECS = {
    "xclr_sparse": LossSpec("xclr", floor=0.2, background=0.2),
    "xclr_sparse_calibrated": LossSpec("xclr", floor=0.2, background=0.2, calibrate="background", tau_s=0.05),
    "xclr_dense": LossSpec("xclr", targets="dense", background=0.1),
    "simclr": LossSpec("simclr"),
    "supcon": LossSpec("supcon"),
    "clip": LossSpec("clip"),
}


def global_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    caption_id = torch.tensor([4, 9, 4, 2, 7, 9, 11, 2])
    table = {4: [9, 2, 30], 9: [4, 7, -1], 2: [4, 11, 7], 7: [9, 2, 4], 11: [2, 50, 60]}
    sims = torch.tensor([0.9, 0.6, 0.4])
    return {
        "view1": torch.randn(M, 3, SIZE, SIZE, generator=g),
        "view2": torch.randn(M, 3, SIZE, SIZE, generator=g),
        "caption_id": caption_id,
        "nbr_id": torch.tensor([table[int(c)] for c in caption_id]),
        "nbr_sim": sims.repeat(M, 1),
        "emb": torch.randn(M, 16, generator=g),
    }


def main(out: str) -> None:
    d = init_distributed("cpu")
    m = M // d.world_size
    local = {k: v[d.rank * m:(d.rank + 1) * m] for k, v in global_batch().items()}
    results = {}
    for name, spec in SPECS.items():
        torch.manual_seed(0)
        model = Encoder("resnet18", small_stem=True, proj_hidden=32, proj_dim=16).eval()
        net = DistributedDataParallel(model) if d.world_size > 1 else model
        z1, z2 = net(torch.cat([local["view1"], local["view2"]])).chunk(2)
        loss, _ = objective(spec, z1, z2, local, d.rank)
        loss.backward()
        results[name] = {"loss": all_reduce_sum(loss.detach()) / d.world_size,
                         "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}
    if d.rank == 0:
        torch.save(results, out)
    if d.world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
