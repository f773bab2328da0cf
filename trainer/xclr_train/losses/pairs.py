"""What the metric-learning losses (triplet, margin contrastive, N-pair) share: view-level positive masks and
Euclidean distances between unit-norm views.

Columns are the 2M views of a global batch, views-major (column j belongs to sample j mod M); a rank's anchors are
its 2m views [view-1 rows; view-2 rows], anchor i owns column self_i. A sample-level positive matrix P (m, M)
(equal caption ids, equal labels or graph neighbours, as `--positives` asks; built in `xclr_train.objectives.positives`)
gives the view-level masks

    pos[i, j] = P[i mod m, j mod M] and j != self_i        neg[i, j] = not P[i mod m, j mod M]

so the anchor's other view is always a positive and a view never pairs with itself.
"""

from __future__ import annotations

from torch import Tensor


def view_masks(positives: Tensor, self_cols: Tensor) -> tuple[Tensor, Tensor]:
    """(pos, neg), each (2m, 2M) bool, from sample-level positives (m, M) bool and the anchors' own columns."""
    pos = positives.repeat(2, 2)
    neg = ~pos
    pos = pos.scatter(1, self_cols[:, None], False)
    return pos, neg


def distances(anchors: Tensor, columns: Tensor) -> Tensor:
    """||a_i - c_j|| = sqrt(2 - 2 a_i . c_j) for unit-norm rows, (n, 2M); clamped at 1e-12 before the root so a
    zero distance has a finite gradient."""
    return (2 - 2 * anchors @ columns.T).clamp(min=1e-12).sqrt()
