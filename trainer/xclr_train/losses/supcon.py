"""SupCon (Khosla et al. 2020, the L_out form): every other view with the anchor's label is a positive.

    loss = mean_i  - 1/|P(i)| sum_{p in P(i)} log softmax_{j != i}(z_i . z_j / tau)_p,  P(i) = {j != i : y_j = y_i}

i.e. the soft contrastive loss with sample-level weights w_ab = [y_a = y_b]. xclr labels are caption ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xclr_train.losses.soft import soft_contrastive


def supcon_weights(row_labels: Tensor, labels: Tensor) -> Tensor:
    """w_ab = 1 where the anchor's label equals sample b's label, shape (n, M)."""
    return (row_labels[:, None] == labels[None, :]).float()


def supcon_loss(z1: Tensor, z2: Tensor, labels: Tensor, tau: float = 0.1) -> Tensor:
    """SupCon over one global batch: z1, z2 (M, d) (normalised here), labels (M,)."""
    m = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    return soft_contrastive(z, z, torch.arange(2 * m, device=z.device), supcon_weights(labels, labels), tau)
