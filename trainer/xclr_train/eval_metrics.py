"""The evaluation protocol's shared half: how a labelled set is cut into a database and queries, and the metrics
that both `xclr-eval` and the trainer's in-run evaluation (`xclr_train.in_run_eval`) report, defined once here in
torch so that features stay on the device they were computed on (xclr-eval hands over its numpy features as CPU
tensors; `xclr_eval.metrics` holds the metrics only it reports).

Features are L2-normalised first (cosine geometry). A set is either split once, stratified by label, into database
and queries (`split`, seeded), or given as a database and a held-out query set (`halves`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

KNN_K = 20
BLOCK = 1024  # query rows per block of the n x n similarity work
CAPTION_RECALL_AT = (1, 5)
DEFAULT_SEED = 0  # the split's seed: xclr-eval's --seed default, and the in-run evaluation's


def split(labels: np.ndarray, seed: int, test_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(database indices, query indices), sorted, stratified by label; every class needs at least two samples.

    This is scikit-learn's ``train_test_split(test_size=test_fraction, random_state=seed, stratify=labels)``
    (its StratifiedShuffleSplit draws, from numpy's RandomState(seed)), written here so that a training node needs no
    scikit-learn: ceil(test_fraction n) queries; per class, counts rounded from the class's share (ties of the
    remainders broken at random), then a random permutation of the class's samples cut into database and queries.
    tests/test_in_run_eval.py checks it against scikit-learn.
    """
    counts = np.bincount(labels)
    present = counts > 0
    if (counts[present] < 2).any():
        small = np.flatnonzero(present & (counts < 2)).tolist()
        raise ValueError(f"classes {small} have a single sample: a stratified train/test split needs two per class")
    _, inverse, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_test = math.ceil(test_fraction * len(labels))
    n_train = len(labels) - n_test
    if min(n_train, n_test) < len(class_counts):
        raise ValueError(f"{len(labels)} samples of {len(class_counts)} classes: a stratified split needs a database "
                         "and queries of at least one sample per class")
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_db = _approximate_mode(class_counts, n_train, rng)
    n_q = _approximate_mode(class_counts - n_db, n_test, rng)
    db, q = [], []
    for members, a, b in zip(by_class, n_db, n_q):
        shuffled = members[rng.permutation(len(members))]
        db.append(shuffled[:a])
        q.append(shuffled[a:a + b])
    return np.sort(np.concatenate(db)), np.sort(np.concatenate(q))


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per class, floor(count / total x n_draws), plus one for the classes of largest remainder until n_draws are
    drawn (among equal remainders, a random choice): scikit-learn's ``_approximate_mode``."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), need)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)


def halves(labels: np.ndarray, query: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(database indices, query indices): the rows that `query` (bool) marks are the queries and the others the
    database; with no `query`, the set is split once (`split`)."""
    return split(labels, seed) if query is None else (np.flatnonzero(~query), np.flatnonzero(query))


def normalise(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def knn_accuracy(db: Tensor, db_y: Tensor, queries: Tensor, query_y: Tensor, k: int = KNN_K) -> float:
    """Weighted kNN: predict argmax_c sum_{j in top-k by cosine} cos(q, x_j) [y_j = c] (Wu et al. 2018 with
    weight = similarity); the fraction of queries predicted right. Votes add up in float64; a tie between classes
    goes to the lower class index."""
    db, queries = normalise(db), normalise(queries)
    k = min(k, len(db))
    classes = int(max(db_y.max(), query_y.max())) + 1
    correct = torch.zeros((), dtype=torch.long, device=db.device)
    for start in range(0, len(queries), BLOCK):
        sims, top = (queries[start:start + BLOCK] @ db.T).topk(k, dim=1)
        votes = torch.zeros(len(sims), classes, dtype=torch.float64, device=db.device)
        votes.scatter_add_(1, db_y[top], sims.double())
        correct += (votes.argmax(1) == query_y[start:start + BLOCK]).sum()
    return int(correct) / len(queries)


@torch.no_grad()
def caption_recall(db: Tensor, db_caption: Tensor, queries: Tensor, query_caption: Tensor) -> dict[str, float]:
    """Instance retrieval: caption_R@k = the fraction of queries with an image of their own caption (caption ids)
    among their k nearest database images by cosine, for k in CAPTION_RECALL_AT. Queries whose caption has no
    database image are left out."""
    db, queries = normalise(db), normalise(queries)
    has_match = torch.isin(query_caption, db_caption)
    queries, query_caption = queries[has_match], query_caption[has_match]
    if not len(queries):
        raise ValueError("no query caption has an image in the database")
    kmax = min(max(CAPTION_RECALL_AT), len(db))
    hits = torch.zeros(len(CAPTION_RECALL_AT), dtype=torch.long, device=db.device)
    for start in range(0, len(queries), BLOCK):
        top = (queries[start:start + BLOCK] @ db.T).topk(kmax, dim=1).indices  # best first
        same = db_caption[top] == query_caption[start:start + BLOCK, None]
        hits += torch.stack([same[:, :min(k, kmax)].any(1).sum() for k in CAPTION_RECALL_AT])
    return {f"caption_R@{k}": h / len(queries) for k, h in zip(CAPTION_RECALL_AT, hits.tolist())}
