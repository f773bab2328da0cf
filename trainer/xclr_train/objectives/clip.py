"""CLIP against the frozen caption embeddings (KEY.emb.npy): the projection has the caption embedding's size and
both views are image rows of the image-text loss (`xclr_train.losses.clip`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from xclr_train.data import Needs
from xclr_train.losses.clip import clip_rows
from xclr_train.objectives.base import Columns, Objective, TauArgs, Views


class CLIP(Objective):
    name = "clip"

    @dataclass(frozen=True)
    class Args(TauArgs):
        pass

    @property
    def needs(self) -> Needs:
        return Needs(embedding=True)

    def projection_dim(self, proj_dim: int, caption_dim: int | None) -> int:
        return caption_dim

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        return text_rows(self.columns(views, batch, rank), batch, self.args.tau, self.gathers.gather), {}


def text_rows(c: Columns, batch: dict, tau: float, gather: Callable[[Tensor], Tensor]) -> Tensor:
    """The image-text loss of one rank's anchors against the global batch's frozen caption embeddings (KEY.emb.npy)."""
    texts = F.normalize(batch["emb"].float(), dim=1)
    return clip_rows(c.anchors, batch["caption_id"].repeat(2), c.columns, c.caption_ids.repeat(2), texts,
                     batch["caption_id"], gather(texts), c.caption_ids, tau)
