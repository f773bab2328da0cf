"""MoCo's InfoNCE against a momentum encoder and a queue of negatives (He et al. 2020; v2's MLP head), symmetrised.

q = normalised online projection of one view, k+ = normalised momentum-encoder projection of the sample's other
view, Q = the queue of past keys (unit-norm, no gradient):

    l(q, k+) = - log  exp(q . k+ / tau) / (exp(q . k+ / tau) + sum_{k in Q} exp(q . k / tau))
    loss     = mean over the samples of (l(q1, k2) + l(q2, k1)) / 2

Each sample's term involves only its own key and the queue, so a rank's mean over its samples averages to the
whole-batch value; the keys of all ranks enter the queue after the step (`xclr_train.objectives.state`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce_queue(queries: Tensor, keys: Tensor, queue: Tensor, tau: float) -> Tensor:
    """Per-query l(q, k+) above: queries, keys (n, d) and queue (Q, d), all unit-norm -> (n,)."""
    positive = (queries * keys).sum(1, keepdim=True)
    logits = torch.cat([positive, queries @ queue.T], dim=1) / tau
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


def moco_loss(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, queue: Tensor, tau: float = 0.1) -> Tensor:
    """The symmetrised loss: online projections q1, q2 and momentum projections k1, k2 (M, d), normalised here."""
    q1, q2, k1, k2 = (F.normalize(x.float(), dim=1) for x in (q1, q2, k1, k2))
    first, second = info_nce_queue(q1, k2.detach(), queue, tau), info_nce_queue(q2, k1.detach(), queue, tau)
    return (first.mean() + second.mean()) / 2
