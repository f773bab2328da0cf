"""SigLIP's sigmoid loss (Zhai et al. 2023) against frozen caption embeddings: every (image view, caption) pair of
the batch is an independent binary classification.

Both views of every sample are image rows x_i (2M of them, unit-norm); the M caption embeddings e_b (frozen,
unit-norm) are the columns. A column with the row's caption id is a positive (a caption repeated in the batch is
not its own negative, as in `xclr_train.losses.clip`):

    z_ib = exp(t') x_i . e_b + b,   l_ib = +1 if c_b = c_i else -1
    loss = - (1 / 2M) sum_i sum_b log sigmoid(l_ib z_ib)

t' (the log temperature) and b are learned scalars; SigLIP starts them at log 10 and -10. The sum over the whole
2M x M matrix is divided by the number of image rows, as open_clip divides by the batch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_T_INIT = math.log(10.0)  # SigLIP's initial t' (temperature exp(t') = 10)
BIAS_INIT = -10.0  # SigLIP's initial b


def siglip_rows(images: Tensor, image_ids: Tensor, all_texts: Tensor, all_text_ids: Tensor, log_t: Tensor,
                bias: Tensor) -> Tensor:
    """A rank's image rows (unit-norm, with their caption ids) against the global batch's M captions: the mean over
    its rows of each row's sum over columns, so the mean over ranks of equal size is `loss` above."""
    logits = images @ all_texts.T * log_t.exp() + bias
    signs = torch.where(image_ids[:, None] == all_text_ids[None, :], 1.0, -1.0)
    return -F.logsigmoid(signs * logits).sum(1).mean()


def siglip_loss(z1: Tensor, z2: Tensor, text: Tensor, caption_ids: Tensor, log_t: Tensor, bias: Tensor) -> Tensor:
    """SigLIP loss of one global batch: z1, z2 (M, d) image projections, text (M, d) caption embeddings, caption ids,
    the log temperature t' and the bias b (0-d tensors)."""
    images = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    texts = F.normalize(text.float(), dim=1)
    return siglip_rows(images, caption_ids.repeat(2), texts, caption_ids, log_t, bias)
