"""X-CLR with a caption-embedding term: X-CLR's soft targets between images plus CLIP's pull of every image view
towards its frozen caption embedding e (KEY.emb.npy), on one projection of the caption embedding's size:

    loss = L_xclr(z; S, tau, tau_s) + w * L_clip(z, e; tau)          (w: --text-weight)

L_xclr is `xclr_train.losses.xclr` with every X-CLR option (targets, floor, calibration, queue); L_clip is
`xclr_train.losses.clip` over the global batch's captions. X-CLR's targets keep little of the caption embedding
beyond "same caption or not" (most of their mass is on the anchor's own caption); the text term asks the image
features to order pairs as the captions do. The statistic `text_loss` is the rank's L_clip.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from xclr_schemas.options import POSITIVE, option
from xclr_train.data import Needs
from xclr_train.objectives.base import Views
from xclr_train.objectives.clip import CLIP, text_rows
from xclr_train.objectives.xclr import XCLR


class XCLRClip(XCLR):
    name = "xclr-clip"

    @dataclass(frozen=True)
    class Args(XCLR.Args):
        text_weight: float = option(1.0, "Weight w of the CLIP term towards the frozen caption embeddings.",
                                    rule=POSITIVE)

    @property
    def needs(self) -> Needs:
        return Needs(neighbors=self.args.targets == "sparse", embedding=True)

    @property
    def needs_reason(self) -> str:
        return f"--loss {self.name}"

    projection_dim = CLIP.projection_dim

    def rows(self, views: Views, batch: dict, rank: int) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.columns(views, batch, rank)
        loss, stats = self.soft_rows(c, batch)
        text = text_rows(c, batch, self.args.tau, self.gathers.gather)
        return loss + self.args.text_weight * text, stats | {"text_loss": text.detach()}
