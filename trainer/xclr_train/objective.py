"""One rank's loss for its share of the global batch: local rows against the gathered global columns.

Rank r holds m samples (global samples r*m .. r*m+m-1 of M = m * world) and their two views' projections z1, z2.
Columns are the 2M normalised projections gathered with gradient, views-major ([all view 1; all view 2]); caption
ids, neighbour rows and caption embeddings are gathered without. The rank's loss is the mean over its 2m anchors;
DDP's gradient averaging then gives the gradient of the global mean (see `xclr_train.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from xclr_train.distributed import gather, gather_with_grad
from xclr_train.losses.clip import clip_rows
from xclr_train.losses.simclr import nt_xent_rows
from xclr_train.losses.soft import soft_contrastive
from xclr_train.losses.supcon import supcon_weights
from xclr_train.losses.xclr import xclr_weights
from xclr_train.targets import calibrate, dense_similarity_rows, sparse_similarity_rows

LOSSES = ("xclr", "simclr", "supcon", "clip")


@dataclass(frozen=True)
class LossSpec:
    name: str
    tau: float = 0.1
    tau_s: float = 0.1
    targets: str = "sparse"  # xclr: "sparse" (nbr.npy) or "dense" (emb.npy)
    floor: float = 0.0  # sparse S outside the graph
    background: float = 0.0  # background similarity of the caption model (calibration, dense graph hits)
    calibrate: str = "none"  # "none" or "background"

    @property
    def needs_neighbors(self) -> bool:
        return self.name == "xclr" and self.targets == "sparse"

    @property
    def needs_embeddings(self) -> bool:
        return self.name == "clip" or (self.name == "xclr" and self.targets == "dense")


def objective(spec: LossSpec, z1: Tensor, z2: Tensor, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
    """(loss, stats) for this rank; stats are local means over its samples, each a 0-d tensor:

    target_entropy        mean entropy of an anchor's target distribution over the 2M - 1 other views
    target_same_caption   mean target mass on views with the anchor's caption (its other view included)
    graph_hits            X-CLR only: mean number of other samples b in the global batch with S[a, b] above the
                          floor (sparse) or the background similarity (dense), before calibration
    """
    m = z1.shape[0]
    n1, n2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    anchors = torch.cat([n1, n2])
    columns = torch.cat([gather_with_grad(n1), gather_with_grad(n2)])
    big_m = columns.shape[0] // 2
    own = rank * m + torch.arange(m, device=z1.device)
    self_cols = torch.cat([own, big_m + own])
    caption_ids = gather(batch["caption_id"])
    stats: dict[str, Tensor] = {}

    if spec.name == "clip":
        texts = F.normalize(batch["emb"].float(), dim=1)
        loss = clip_rows(anchors, batch["caption_id"].repeat(2), columns, caption_ids.repeat(2), texts,
                         batch["caption_id"], gather(texts), caption_ids, spec.tau)
        return loss, stats
    if spec.name == "simclr":
        loss = nt_xent_rows(anchors, columns, self_cols, spec.tau)
        weights = (own[:, None] == torch.arange(big_m, device=z1.device)[None, :]).float()
    elif spec.name == "supcon":
        weights = supcon_weights(batch["caption_id"], caption_ids)
        loss = soft_contrastive(anchors, columns, self_cols, weights, spec.tau)
    elif spec.name == "xclr":
        if spec.targets == "sparse":
            s = sparse_similarity_rows(caption_ids, gather(batch["nbr_id"]), gather(batch["nbr_sim"]), spec.floor, own)
            threshold = spec.floor
        else:
            s = dense_similarity_rows(batch["emb"], gather(batch["emb"]))
            threshold = spec.background
        with torch.no_grad():
            others = torch.ones_like(s, dtype=torch.bool).scatter_(1, own[:, None], False)
            stats["graph_hits"] = ((s > threshold) & others).sum(1).float().mean()
        if spec.calibrate == "background":
            s = calibrate(s, spec.background)
        weights = xclr_weights(s, spec.tau_s)
        loss = soft_contrastive(anchors, columns, self_cols, weights, spec.tau)
    else:
        raise ValueError(f"unknown loss {spec.name!r}; choose from {', '.join(LOSSES)}")
    with torch.no_grad():
        stats.update(_target_stats(weights, own, batch["caption_id"], caption_ids))
    return loss, stats


def _target_stats(weights: Tensor, own: Tensor, row_ids: Tensor, caption_ids: Tensor) -> dict[str, Tensor]:
    """Entropy and same-caption mass of t_i = w_{a, b(j)} / Z over the 2M - 1 other views (equal for both views)."""
    w_self = weights.gather(1, own[:, None]).squeeze(1)
    z = 2 * weights.sum(1) - w_self
    wlogw = 2 * torch.special.xlogy(weights, weights).sum(1) - torch.special.xlogy(w_self, w_self)
    entropy = torch.log(z) - wlogw / z
    same = (row_ids[:, None] == caption_ids[None, :]).float()
    same_mass = (2 * (weights * same).sum(1) - w_self) / z
    return {"target_entropy": entropy.mean(), "target_same_caption": same_mass.mean()}
