"""X-CLR: contrastive loss against soft targets from a caption-similarity matrix S (docs/design.md, Targets and loss).

    G[i, j] = S[a(i), a(j)]   (2M x 2M over the views; a(i) = sample of view i)
    t_i     = softmax_{j != i}(G[i, j] / tau_s),   p_i = softmax_{j != i}(z_i . z_j / tau)
    loss    = mean over the 2M anchors of  - sum_{j != i} t_ij log p_ij

With S = identity and tau_s -> 0 this is SimCLR's NT-Xent; with S = same-label indicator it is close to SupCon.

With a queue (`--queue-size`), j also runs over Q past projections k_q (no gradient) kept with their caption ids
and neighbour rows: G[i, q] = S[a(i), q] and k_q joins the columns of both softmaxes, so an anchor's targets reach
graph neighbours seen in earlier batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xclr_train.losses.soft import soft_contrastive


def xclr_weights(similarity_rows: Tensor, tau_s: float) -> Tensor:
    """Sample-level target weights exp((S - max_b S) / tau_s) for rows of S; t_i is these over j != i, normalised."""
    if tau_s <= 0:
        raise ValueError(f"tau_s must be > 0, got {tau_s}")
    s = similarity_rows.float()
    return torch.sub(s, s.max(dim=1, keepdim=True).values).div_(tau_s).exp_()


def xclr_loss(z1: Tensor, z2: Tensor, similarity: Tensor, tau: float = 0.1, tau_s: float = 0.1,
              queue: Tensor | None = None, queue_similarity: Tensor | None = None) -> Tensor:
    """X-CLR loss of one global batch: z1, z2 (M, d) view projections (normalised here), similarity (M, M);
    optionally a queue (Q, d) (normalised here) and the similarities of the batch to it, (M, Q)."""
    m = z1.shape[0]
    if z2.shape != z1.shape or similarity.shape != (m, m):
        raise ValueError(f"z1 {tuple(z1.shape)}, z2 {tuple(z2.shape)} and similarity {tuple(similarity.shape)} "
                         "must be (M, d), (M, d) and (M, M)")
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    self_cols = torch.arange(2 * m, device=z.device)
    if queue is None:
        return soft_contrastive(z, z, self_cols, xclr_weights(similarity, tau_s), tau)
    weights = xclr_weights(torch.cat([similarity, queue_similarity], dim=1), tau_s)
    return soft_contrastive(z, z, self_cols, weights[:, :m], tau, F.normalize(queue.float(), dim=1), weights[:, m:])
