"""One training step of every loss on a fixed global batch, for the 1-vs-2-process test (`results`: in the test's
process, and on two torchrun ranks by ddp_two_ranks.py).

Each rank takes its equal slice of the same 8-sample global batch, runs the trainer's learner (DDP when there are
two ranks; with the objective's predictor, learned scalars, momentum network and queue), the objective's rows and
backward; the results are the mean loss over ranks and this rank's parameter gradients (the learned scalars' among
them). BatchNorm runs in eval mode: torch has no CPU SyncBatchNorm, and per-rank batch
statistics would differ from whole-batch ones by design, not by a bug in the loss. X-CLR's queue gets the same
fixed entries on every rank. The backbone is a small-stem ResNet-18, and timm's test_vit (6 blocks of width 64;
patch 4 on 16 px) for the specs in `VIT`.
"""

import torch
from torch.nn.parallel import DistributedDataParallel

from xclr_train.distributed import Dist, all_reduce_sum
from xclr_train.models import Encoder, ModelConfig
from xclr_train.objectives import OBJECTIVES, Graph, make_objective

M, K, SIZE = 8, 3, 16
GRAPH = Graph(background=0.2, kth_mean=0.3)  # the sparse floor: min(0.2, 0.3) = 0.2
SPECS = {  # name: (--loss, its options, the graph); every other registered objective at its defaults (below)
    "xclr_sparse": ("xclr", {}, GRAPH),
    "xclr_sparse_calibrated": ("xclr", {"calibrate": "background", "tau_s": 0.05}, GRAPH),
    "xclr_dense": ("xclr", {"targets": "dense"}, Graph(background=0.1)),
    "simclr": ("simclr", {}, GRAPH),
    "supcon": ("supcon", {}, GRAPH),
    "clip": ("clip", {}, GRAPH),
    "xclr_clip": ("xclr-clip", {"text_weight": 0.5}, GRAPH),
    "triplet_hardest": ("triplet", {"margin": 0.5}, GRAPH),
    "triplet_semihard_graph": ("triplet", {"margin": 0.5, "mining": "semihard", "positives": "graph"}, GRAPH),
    "contrastive_label": ("contrastive", {"margin": 1.0, "positives": "label"}, GRAPH),
    "npair": ("npair", {}, GRAPH),
    "supcon_graph": ("supcon", {"positives": "graph"}, GRAPH),
    "xclr_queue": ("xclr", {"queue_size": 6}, GRAPH),
    "moco": ("moco", {"queue_size": 10, "momentum": 0.99}, GRAPH),
    "byol": ("byol", {"momentum": 0.99}, GRAPH),
    "nnclr": ("nnclr", {"queue_size": 10}, GRAPH),
    "xclr_sparse_vit": ("xclr", {}, GRAPH),
    "moco_vit": ("moco", {"queue_size": 10, "momentum": 0.99}, GRAPH),
}
SPECS.update({name: (name, {}, GRAPH) for name in OBJECTIVES if name not in {loss for loss, _, _ in SPECS.values()}})
VIT = {"xclr_sparse_vit", "moco_vit"}


def model_config(name: str) -> ModelConfig:
    if name in VIT:
        return ModelConfig("test_vit", SIZE, 32, 16, patch_size=4)
    return ModelConfig("resnet18", SIZE, 32, 16)


def global_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    caption_id = torch.tensor([4, 9, 4, 2, 7, 9, 11, 2])
    table = {4: [9, 2, 30], 9: [4, 7, -1], 2: [4, 11, 7], 7: [9, 2, 4], 11: [2, 50, 60]}
    sims = torch.tensor([0.9, 0.6, 0.4])
    return {
        "view1": torch.randn(M, 3, SIZE, SIZE, generator=g),
        "view2": torch.randn(M, 3, SIZE, SIZE, generator=g),
        "caption_id": caption_id,
        "label": caption_id % 3,
        "nbr_id": torch.tensor([table[int(c)] for c in caption_id]),
        "nbr_sim": sims.repeat(M, 1),
        "emb": torch.randn(M, 16, generator=g),
    }


def results(d: Dist) -> dict:
    """name -> {"loss": the step's loss, the mean over ranks; "grads": this rank's parameter gradients by name} for
    every spec, on this rank's slice of the global batch."""
    m = M // d.world_size
    local = {k: v[d.rank * m:(d.rank + 1) * m] for k, v in global_batch().items()}
    out = {}
    for name, (loss, options, graph) in SPECS.items():
        torch.manual_seed(0)
        objective = make_objective(loss, options, graph)
        learner = objective.build(Encoder(model_config(name)), 16, 32, K, 0,
                                  torch.device("cpu"), d.world_size)
        learner.eval()
        if objective.target is not None:
            objective.target.eval()
            with torch.no_grad():  # a target that differs from the online network, as after some steps
                for p in objective.target.parameters():
                    p.mul_(0.9)
        if name == "xclr_queue":
            g = torch.Generator().manual_seed(1)
            objective.queue.push({"z": torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1),
                               "caption_id": torch.tensor([9, 2, 30, 4]), "nbr_id": torch.tensor([[4] * K] * 4),
                               "nbr_sim": torch.full((4, K), 0.7)})
        net = DistributedDataParallel(learner) if d.world_size > 1 else learner
        views = objective.views(net, torch.cat([local["view1"], local["view2"]]))
        value, _ = objective.rows(views, local, d.rank)
        value.backward()
        out[name] = {"loss": all_reduce_sum(value.detach()) / d.world_size,
                     "grads": {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}}
    return out
