"""One rank's loss for its share of the global batch: local rows against the gathered global columns.

Rank r holds m samples (global samples r*m .. r*m+m-1 of M = m * world) and their two views' outputs (`Views`).
Columns are the 2M normalised projections gathered with gradient, views-major ([all view 1; all view 2]); caption
ids, labels, neighbour rows and caption embeddings are gathered without. The rank's loss is the mean over its
anchors; DDP's gradient averaging then gives the gradient of the global mean (see `xclr_train.distributed`).
A queue (moco's negatives, nnclr's support set, X-CLR's past projections; `xclr_train.frameworks`) is the same on
every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from xclr_train.distributed import gather, gather_with_grad
from xclr_train.losses.byol import byol_loss
from xclr_train.losses.clip import clip_rows
from xclr_train.losses.contrastive import contrastive_rows
from xclr_train.losses.moco import moco_loss
from xclr_train.losses.nnclr import nnclr_rows
from xclr_train.losses.npair import npair_rows
from xclr_train.losses.simclr import nt_xent_rows
from xclr_train.losses.soft import soft_contrastive
from xclr_train.losses.triplet import triplet_rows
from xclr_train.losses.xclr import xclr_weights
from xclr_train.targets import calibrate, dense_similarity_rows, graph_positive_rows, sparse_similarity_rows

LOSSES = ("xclr", "simclr", "supcon", "clip", "triplet", "npair", "contrastive", "moco", "byol", "nnclr")
POSITIVE_LOSSES = ("supcon", "triplet", "npair", "contrastive")  # the losses that take --positives
POSITIVES = ("caption", "label", "graph")
MARGINS = {"triplet": 0.2, "contrastive": 1.0}  # on distances between unit vectors (0 to 2)
MOMENTUM = {"moco": 0.99, "byol": 0.996}  # base EMA of the target network (MoCo v3, BYOL)
QUEUE_SIZE = {"moco": 65536, "nnclr": 98304}  # MoCo's queue and NNCLR's support set on ImageNet


@dataclass(frozen=True)
class LossSpec:
    name: str
    tau: float = 0.1
    tau_s: float = 0.1
    targets: str = "sparse"  # xclr: "sparse" (nbr.npy) or "dense" (emb.npy)
    floor: float = 0.0  # sparse S outside the graph (-inf: no target weight there)
    background: float = 0.0  # background similarity of the caption model (calibration, dense graph hits)
    calibrate: str = "none"  # "none" or "background"
    positives: str = "caption"  # POSITIVE_LOSSES: equal "caption" ids, equal "label"s, or "graph" neighbours
    margin: float = 0.2  # triplet, contrastive
    mining: str = "hardest"  # triplet: "hardest" or "semihard"
    queue_size: int = 0  # moco, nnclr; xclr: 0 for none
    momentum: float = 0.99  # moco, byol

    @property
    def needs_neighbors(self) -> bool:
        return (self.name == "xclr" and self.targets == "sparse") or (
            self.name in POSITIVE_LOSSES and self.positives == "graph")

    @property
    def needs_embeddings(self) -> bool:
        return self.name == "clip" or (self.name == "xclr" and self.targets == "dense")

    @property
    def needs_labels(self) -> bool:
        return self.name in POSITIVE_LOSSES and self.positives == "label"


@dataclass
class Views:
    """A rank's network outputs for its m samples, (m, d) each: online projections z, predictions p (byol,
    nnclr) and the momentum network's projections t (moco, byol; no gradient)."""
    z1: Tensor
    z2: Tensor
    p1: Tensor | None = None
    p2: Tensor | None = None
    t1: Tensor | None = None
    t2: Tensor | None = None


def objective(spec: LossSpec, views: Views, batch: dict, rank: int,
              queue: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """(loss, stats) for this rank; stats are local means over its samples, each a 0-d tensor:

    target_entropy        mean entropy of an anchor's target distribution over the 2M - 1 other views (and the
                          queue's entries)
    target_same_caption   mean target mass on views with the anchor's caption (its other view included)
    graph_hits            X-CLR only: mean number of other samples b in the global batch with S[a, b] above the
                          floor (sparse) or the background similarity (dense), before calibration
    graph_hits_queue      X-CLR with a queue: the same count over the queue's entries
    positives             triplet, npair, contrastive: mean number of positive views per anchor

    `queue` holds the queue's filled entries: "z" (Q, d) unit-norm, and for X-CLR "caption_id", "nbr_id", "nbr_sim".
    """
    z1, z2 = views.z1, views.z2
    m = z1.shape[0]
    own = rank * m + torch.arange(m, device=z1.device)
    if spec.name == "byol":
        return byol_loss(views.p1, views.p2, views.t1, views.t2), {}
    if spec.name == "moco":  # per-sample terms: the rank's rows are the whole-batch formula
        return moco_loss(z1, z2, views.t1, views.t2, queue["z"], spec.tau), {}
    if spec.name == "nnclr":
        n1, n2, p1, p2 = (F.normalize(x.float(), dim=1) for x in (z1, z2, views.p1, views.p2))
        return nnclr_rows(n1, n2, gather_with_grad(p1), gather_with_grad(p2), queue["z"], own, spec.tau), {}

    if spec.name == "npair":
        anchors = torch.cat([z1, z2]).float()
        columns = torch.cat([gather_with_grad(z1.float()), gather_with_grad(z2.float())])
    else:
        n1, n2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        anchors = torch.cat([n1, n2])
        columns = torch.cat([gather_with_grad(n1), gather_with_grad(n2)])
    big_m = columns.shape[0] // 2
    self_cols = torch.cat([own, big_m + own])
    caption_ids = gather(batch["caption_id"])
    stats: dict[str, Tensor] = {}

    if spec.name == "clip":
        texts = F.normalize(batch["emb"].float(), dim=1)
        loss = clip_rows(anchors, batch["caption_id"].repeat(2), columns, caption_ids.repeat(2), texts,
                         batch["caption_id"], gather(texts), caption_ids, spec.tau)
        return loss, stats
    if spec.name in POSITIVE_LOSSES:
        positives = _positive_rows(spec.positives, batch, caption_ids, own)
        if spec.name == "supcon":
            weights = positives.float()
            loss = soft_contrastive(anchors, columns, self_cols, weights, spec.tau)
            with torch.no_grad():
                stats.update(_target_stats(weights, own, batch["caption_id"], caption_ids, big_m))
            return loss, stats
        if spec.name == "triplet":
            loss = triplet_rows(anchors, columns, self_cols, positives, spec.margin, spec.mining)
        elif spec.name == "contrastive":
            loss = contrastive_rows(anchors, columns, self_cols, positives, spec.margin)
        else:
            loss = npair_rows(anchors, columns, self_cols, positives)
        stats["positives"] = (2 * positives.sum(1) - 1).float().mean()
        return loss, stats
    if spec.name == "simclr":
        loss = nt_xent_rows(anchors, columns, self_cols, spec.tau)
        weights = (own[:, None] == torch.arange(big_m, device=z1.device)[None, :]).float()
        with torch.no_grad():
            stats.update(_target_stats(weights, own, batch["caption_id"], caption_ids, big_m))
        return loss, stats
    if spec.name != "xclr":
        raise ValueError(f"unknown loss {spec.name!r}; choose from {', '.join(LOSSES)}")
    return _xclr(spec, anchors, columns, self_cols, own, batch, caption_ids, queue)


def _xclr(spec: LossSpec, anchors: Tensor, columns: Tensor, self_cols: Tensor, own: Tensor, batch: dict,
          caption_ids: Tensor, queue: dict[str, Tensor] | None) -> tuple[Tensor, dict[str, Tensor]]:
    """X-CLR's loss and stats; the queue's entries are further columns with their own rows of S."""
    big_m = len(caption_ids)
    ids = caption_ids
    q = 0 if queue is None else len(queue["z"])
    if spec.targets == "sparse":
        nbr_id, nbr_sim = gather(batch["nbr_id"]), gather(batch["nbr_sim"])
        if q:
            ids = torch.cat([caption_ids, queue["caption_id"]])
            nbr_id, nbr_sim = torch.cat([nbr_id, queue["nbr_id"]]), torch.cat([nbr_sim, queue["nbr_sim"]])
        s = sparse_similarity_rows(ids, nbr_id, nbr_sim, spec.floor, own)
        threshold = spec.floor
    else:
        s = dense_similarity_rows(batch["emb"], gather(batch["emb"]))
        threshold = spec.background
    stats: dict[str, Tensor] = {}
    with torch.no_grad():
        hits = (s > threshold).scatter_(1, own[:, None], False)
        stats["graph_hits"] = hits[:, :big_m].sum(1).float().mean()
        if queue is not None:
            stats["graph_hits_queue"] = hits[:, big_m:].sum(1).float().mean()
    if spec.calibrate == "background":
        s = calibrate(s, spec.background)
    weights = xclr_weights(s, spec.tau_s)
    loss = soft_contrastive(anchors, columns, self_cols, weights[:, :big_m], spec.tau,
                            queue["z"] if q else None, weights[:, big_m:] if q else None)
    with torch.no_grad():
        stats.update(_target_stats(weights, own, batch["caption_id"], ids, big_m))
    return loss, stats


def _positive_rows(kind: str, batch: dict, caption_ids: Tensor, own: Tensor) -> Tensor:
    """Sample-level positives of the rank's m samples over the global batch (gathered `caption_ids`), (m, M) bool."""
    if kind == "graph":
        return graph_positive_rows(caption_ids, gather(batch["nbr_id"]), gather(batch["nbr_sim"]), own)
    if kind == "caption":
        return batch["caption_id"][:, None] == caption_ids[None, :]
    return batch["label"][:, None] == gather(batch["label"])[None, :]


def _target_stats(weights: Tensor, own: Tensor, row_ids: Tensor, column_ids: Tensor,
                  big_m: int) -> dict[str, Tensor]:
    """Entropy and same-caption mass of t_i = w_{a, b(j)} / Z over the 2M - 1 other views and the queue's entries
    (equal for both views); `weights` (m, M + Q) and `column_ids` (M + Q,) list the M batch samples first."""
    views = torch.ones(weights.shape[1], device=weights.device)
    views[:big_m] = 2  # a batch sample has two views, a queue entry one
    w_self = weights.gather(1, own[:, None]).squeeze(1)
    z = (weights * views).sum(1) - w_self
    wlogw = (torch.special.xlogy(weights, weights) * views).sum(1) - torch.special.xlogy(w_self, w_self)
    entropy = torch.log(z) - wlogw / z
    same = (row_ids[:, None] == column_ids[None, :]).float()
    same_mass = ((weights * same * views).sum(1) - w_self) / z
    return {"target_entropy": entropy.mean(), "target_same_caption": same_mass.mean()}
