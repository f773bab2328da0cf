"""X-CLR: soft targets from the caption-similarity graph (`xclr_train.losses.xclr`, `xclr_train.targets`).

Sparse targets read each sample's neighbour row (KEY.nbr.npy); pairs outside the graph get the floor
(`targets.floor_similarity`) or, with --floor none, no target weight. Dense targets use the caption embeddings
(KEY.emb.npy). With --queue-size, past projections with their caption ids and neighbour rows are further columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from xclr_schemas.options import NON_NEGATIVE, POSITIVE, option
from xclr_train.data import Needs
from xclr_train.distributed import PROCESS_GROUP, Gathers
from xclr_train.errors import TrainError
from xclr_train.losses.soft import soft_contrastive
from xclr_train.losses.xclr import xclr_weights
from xclr_train.objectives.base import Columns, Graph, Objective, TauArgs, Views, target_stats
from xclr_train.objectives.state import Queue
from xclr_train.targets import calibrate, dense_similarity_rows, floor_similarity, sparse_similarity_rows


class XCLR(Objective):
    name = "xclr"

    @dataclass(frozen=True)
    class Args(TauArgs):
        tau_s: float = option(0.1, "Temperature of the X-CLR target distribution.", rule=POSITIVE)
        targets: str = option("sparse", "X-CLR targets: sparse from KEY.nbr.npy, dense from KEY.emb.npy (needs "
                              "--with-embeddings shards).", ("sparse", "dense"))
        calibrate: str = option("none", "Map similarities to max(0, (S - b) / (1 - b)) with the graph's background "
                                "similarity b.", ("none", "background"))
        floor: str = option("background", "Sparse S for pairs outside the graph: the background similarity (clipped "
                            "at the k-th neighbour mean), or none, which gives them no target weight.",
                            ("background", "none"))
        queue_size: int = option(0, "Further columns: the projections of view 1 of the last queue-size samples (all "
                                 "ranks) with their caption ids and neighbour rows; empty at the start (0: no queue).",
                                 rule=NON_NEGATIVE)

        def check(self) -> None:
            if self.floor == "none" and (self.targets != "sparse" or self.calibrate != "none"):
                raise TrainError(f"--floor none is for --loss {self.loss} with sparse targets and no --calibrate "
                                 "(calibration would lift the pairs outside the graph back to 0)")
            if self.queue_size and self.targets != "sparse":
                raise TrainError(f"--queue-size with --loss {self.loss} needs sparse targets (the queue keeps "
                                 "neighbour rows)")

    def __init__(self, args: Args, graph: Graph, gathers: Gathers = PROCESS_GROUP) -> None:
        super().__init__(args, graph, gathers)
        if graph.background is None:
            raise TrainError(f"--loss {self.name} needs the shards manifest (the graph's background similarity) "
                             "beside the tars")
        self.background = graph.background
        self.floor = float("-inf") if args.floor == "none" else floor_similarity(graph.background, graph.kth_mean)

    @property
    def needs(self) -> Needs:
        return Needs(neighbors=self.args.targets == "sparse", embedding=self.args.targets == "dense")

    @property
    def needs_reason(self) -> str:
        return f"--loss {self.name} with sparse targets" if self.args.targets == "sparse" else "--targets dense"

    def make_queue(self, proj_dim: int, k: int | None, seed: int, device: torch.device) -> Queue | None:
        if not self.args.queue_size:
            return None  # starts empty: a random entry would have no caption
        return Queue(self.args.queue_size, {"z": ((proj_dim,), torch.float32), "caption_id": ((), torch.long),
                                            "nbr_id": ((k,), torch.long), "nbr_sim": ((k,), torch.float32)}, device)

    def queue_entries(self, views: Views, batch: dict) -> dict[str, Tensor]:
        entries = {"z": self.gathered_units(views.z1)}
        return entries | {key: self.gathers.gather(batch[key]) for key in ("caption_id", "nbr_id", "nbr_sim")}

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.soft_rows(self.columns(views, batch, rank), batch)

    def soft_rows(self, c: Columns, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """The X-CLR loss and statistics of one rank's anchors; the queue's entries are further columns with their
        own rows of S."""
        queue = None if self.queue is None else self.queue.entries()
        q = 0 if queue is None else len(queue["z"])
        ids = c.caption_ids
        if self.args.targets == "sparse":
            nbr_id, nbr_sim = self.gathers.gather(batch["nbr_id"]), self.gathers.gather(batch["nbr_sim"])
            if q:
                ids = torch.cat([ids, queue["caption_id"]])
                nbr_id, nbr_sim = torch.cat([nbr_id, queue["nbr_id"]]), torch.cat([nbr_sim, queue["nbr_sim"]])
            s = sparse_similarity_rows(ids, nbr_id, nbr_sim, self.floor, c.own)
            threshold = self.floor
        else:
            s = dense_similarity_rows(batch["emb"], self.gathers.gather(batch["emb"]))
            threshold = self.background
        stats: dict[str, Tensor] = {}
        with torch.no_grad():
            hits = (s > threshold).scatter_(1, c.own[:, None], False)
            stats["graph_hits"] = hits[:, :c.big_m].sum(1).float().mean()
            if queue is not None:
                stats["graph_hits_queue"] = hits[:, c.big_m:].sum(1).float().mean()
        if self.args.calibrate == "background":
            s = calibrate(s, self.background)
        weights = xclr_weights(s, self.args.tau_s)
        loss = soft_contrastive(c.anchors, c.columns, c.self_cols, weights[:, :c.big_m], self.args.tau,
                                queue["z"] if q else None, weights[:, c.big_m:] if q else None)
        stats.update(target_stats(weights, c.own, batch["caption_id"], ids, c.big_m))
        return loss, stats
