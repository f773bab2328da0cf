"""CLIP-style loss against frozen caption embeddings: image views contrast with the batch's captions.

Both views of every sample are image anchors; the M caption embeddings e_b (frozen, unit-norm) are text anchors.
Columns with the anchor's caption id are its positives, weighted equally (a caption repeated in the batch is not
its own negative):

    L_img = mean over image views i of  - sum_b t_ib log softmax_b(z_i . e_b / tau),   t_ib = [c_b = c_i] / #
    L_txt = mean over captions a of     - sum_j t_aj log softmax_j(e_a . z_j / tau),  over the 2M image views
    loss  = (L_img + L_txt) / 2
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _soft_ce(logits: Tensor, positive: Tensor) -> Tensor:
    targets = positive / positive.sum(1, keepdim=True)
    return -(targets * torch.log_softmax(logits, dim=1)).sum(1)


def clip_rows(images: Tensor, image_ids: Tensor, all_images: Tensor, all_image_ids: Tensor, texts: Tensor,
              text_ids: Tensor, all_texts: Tensor, all_text_ids: Tensor, tau: float) -> Tensor:
    """Both directions for a rank's rows: its image views against all captions and its captions against all views.

    Each direction is averaged over the rank's own anchors, so the mean over ranks of equal size is `loss` above.
    `all_*` hold the global batch (2M views, M captions), unit-norm.
    """
    img = _soft_ce(images @ all_texts.T / tau, (image_ids[:, None] == all_text_ids[None, :]).float())
    txt = _soft_ce(texts @ all_images.T / tau, (text_ids[:, None] == all_image_ids[None, :]).float())
    return (img.mean() + txt.mean()) / 2


def clip_loss(z1: Tensor, z2: Tensor, text: Tensor, caption_ids: Tensor, tau: float = 0.1) -> Tensor:
    """CLIP loss of one global batch: z1, z2 (M, d) image projections, text (M, d) caption embeddings, caption ids."""
    images = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    texts = F.normalize(text.float(), dim=1)
    image_ids = caption_ids.repeat(2)
    return clip_rows(images, image_ids, images, image_ids, texts, caption_ids, texts, caption_ids, tau)
