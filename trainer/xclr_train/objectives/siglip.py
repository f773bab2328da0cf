"""SigLIP against the frozen caption embeddings (KEY.emb.npy), the sigmoid variant of the `clip` objective: the
projection has the caption embedding's size, both views are image rows, and samples of one caption are positives,
not negatives, as in `clip` (`xclr_train.losses.siglip`).

The log temperature t' and the bias b are the learner's scalars "log_t" and "bias" (SigLIP's initial values), so
the optimizer trains them, DDP averages their gradients and checkpoints save them. Rank r's loss is its 2m image
rows against the M gathered captions, - (1 / 2m) sum_i sum_b log sigmoid(l_ib z_ib); the captions are frozen, so
the mean over ranks (DDP's gradient averaging) is the gradient of the global loss, whose sum over the 2M x M
matrix is divided by 2M."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from xclr_train.data import Needs
from xclr_train.losses.siglip import BIAS_INIT, LOG_T_INIT, siglip_rows
from xclr_train.objectives.base import Objective, Options, Views


class SigLIP(Objective):
    name = "siglip"

    @dataclass(frozen=True)
    class Args(Options):
        pass

    def projection_dim(self, proj_dim: int, caption_dim: int | None) -> int:
        return caption_dim

    @property
    def needs(self) -> Needs:
        return Needs(embedding=True)

    @property
    def scalars(self) -> dict[str, float]:
        return {"log_t": LOG_T_INIT, "bias": BIAS_INIT}

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, stats): "siglip_t" the temperature exp(t'), "siglip_b" the bias b."""
        images = F.normalize(torch.cat([views.z1, views.z2]).float(), dim=1)
        texts = F.normalize(batch["emb"].float(), dim=1)
        log_t, bias = self.learner.scalars["log_t"], self.learner.scalars["bias"]
        loss = siglip_rows(images, batch["caption_id"].repeat(2), self.gathers.gather(texts),
                           self.gathers.gather(batch["caption_id"]), log_t, bias)
        return loss, {"siglip_t": log_t.detach().exp(), "siglip_b": bias.detach().clone()}
