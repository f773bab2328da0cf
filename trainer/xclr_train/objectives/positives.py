"""What the objectives with sample-level positives (supcon, triplet, npair, contrastive) share: --positives and the
positive mask P (m, M) of the rank's samples over the global batch:

    caption   P[a, b] = caption(a) == caption(b)
    label     P[a, b] = label(a) == label(b)                  (KEY.json "label")
    graph     P[a, b] = the same caption, or either caption among the other's top-k  (KEY.nbr.npy)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from xclr_schemas.options import option
from xclr_train.data import Needs
from xclr_train.objectives.base import Columns, Objective, Options, Views
from xclr_train.targets import graph_positive_rows

POSITIVES = ("caption", "label", "graph")


@dataclass(frozen=True)
class PositivesArgs(Options):
    """The base of their Args."""
    positives: str = option("caption", "Positives share the caption id, the label (KEY.json \"label\") or are graph "
                            "neighbours (same caption or top-k either way; needs KEY.nbr.npy).", POSITIVES)


class PairObjective(Objective):
    """An objective whose Args have a `positives` field. Its rows: `pair_loss` of the rank's anchors given P, and
    the statistic "positives" (positive views per anchor)."""

    normalize: ClassVar[bool] = True  # anchors and columns are unit vectors

    @property
    def needs(self) -> Needs:
        return Needs(neighbors=self.args.positives == "graph", labels=self.args.positives == "label")

    @property
    def needs_reason(self) -> str:
        return f"--positives {self.args.positives}"

    def positive_rows(self, batch: dict, caption_ids: Tensor, own: Tensor) -> Tensor:
        """P above, (m, M) bool; `caption_ids` are the global batch's, `own` the rank's global sample indices."""
        if self.args.positives == "graph":
            gather = self.gathers.gather
            return graph_positive_rows(caption_ids, gather(batch["nbr_id"]), gather(batch["nbr_sim"]), own)
        if self.args.positives == "caption":
            return batch["caption_id"][:, None] == caption_ids[None, :]
        return batch["label"][:, None] == self.gathers.gather(batch["label"])[None, :]

    def pair_loss(self, c: Columns, positives: Tensor) -> Tensor:
        raise NotImplementedError

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.columns(views, batch, rank, self.normalize)
        positives = self.positive_rows(batch, c.caption_ids, c.own)
        return self.pair_loss(c, positives), {"positives": (2 * positives.sum(1) - 1).float().mean()}
