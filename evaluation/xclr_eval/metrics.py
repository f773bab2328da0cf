"""Evaluation metrics on backbone features. Features are L2-normalised first (cosine geometry) except for the linear
probe, which standardises them. A database part (kNN database, retrieval database, probe training) and a query part
(kNN queries, retrieval queries, probe test) come either from one labelled set split once, stratified by label, or
from two sets (a held-out query set, e.g. another image style, against a database). `xclr_eval.registry` registers
each with its table column and what it needs, and scores them."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    adjusted_rand_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

KNN_K = 20
BLOCK = 1024  # query rows per block of the n x n similarity work
SILHOUETTE_SAMPLES = 5000
CAPTION_RECALL_AT = (1, 5)
ALIGNMENT_PAIRS = 20_000


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def split(labels: np.ndarray, seed: int, test_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), stratified by label; every class needs at least two samples."""
    counts = np.bincount(labels)
    present = counts > 0
    if (counts[present] < 2).any():
        small = np.flatnonzero(present & (counts < 2)).tolist()
        raise ValueError(f"classes {small} have a single sample: a stratified train/test split needs two per class")
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def knn_accuracy(db: np.ndarray, db_y: np.ndarray, queries: np.ndarray, query_y: np.ndarray,
                 k: int = KNN_K) -> float:
    """Weighted kNN: predict argmax_c sum_{j in top-k by cosine} cos(q, x_j) [y_j = c] (Wu et al. 2018 with
    weight = similarity)."""
    db, queries = normalise(db), normalise(queries)
    k = min(k, len(db))
    classes = int(max(db_y.max(), query_y.max())) + 1
    correct = 0
    for start in range(0, len(queries), BLOCK):
        sims = queries[start:start + BLOCK] @ db.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        votes = np.zeros((len(sims), classes))
        np.add.at(votes, (np.arange(len(sims))[:, None], db_y[top]), np.take_along_axis(sims, top, axis=1))
        correct += int((votes.argmax(1) == query_y[start:start + BLOCK]).sum())
    return correct / len(queries)


def linear_probe_accuracy(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray,
                          seed: int) -> float:
    """Test accuracy of an L2-regularised (C = 1) multinomial logistic regression on standardised features."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train, train_y)
    return float(probe.score(test, test_y))


def retrieval(db: np.ndarray, db_y: np.ndarray, queries: np.ndarray, query_y: np.ndarray) -> dict[str, float]:
    """Each query ranks the database by cosine; relevant = same label. With rel_r the relevance at rank r and R the
    relevant count: P@k = sum_{r<=k} rel_r / k, R@k = sum_{r<=k} rel_r / R, AP = sum_r rel_r P@r / R, mAP = mean AP.
    Queries without any relevant item are left out."""
    db, queries = normalise(db), normalise(queries)
    sums = {"precision@1": 0.0, "precision@10": 0.0, "recall@10": 0.0, "mAP": 0.0}
    used = 0
    for start in range(0, len(queries), BLOCK):
        order = np.argsort(-(queries[start:start + BLOCK] @ db.T), axis=1, kind="stable")
        rel = db_y[order] == query_y[start:start + BLOCK, None]
        total = rel.sum(1)
        keep = total > 0
        rel, total = rel[keep], total[keep]
        hits = np.cumsum(rel, axis=1)
        precision_at = hits / np.arange(1, rel.shape[1] + 1)
        sums["precision@1"] += rel[:, 0].sum()
        sums["precision@10"] += (hits[:, min(9, rel.shape[1] - 1)] / 10).sum()
        sums["recall@10"] += (hits[:, min(9, rel.shape[1] - 1)] / total).sum()
        sums["mAP"] += ((precision_at * rel).sum(1) / total).sum()
        used += int(keep.sum())
    return {name: float(value / used) for name, value in sums.items()}


def caption_recall(db: np.ndarray, db_caption: np.ndarray, queries: np.ndarray,
                   query_caption: np.ndarray) -> dict[str, float]:
    """Instance retrieval: caption_R@k = the fraction of queries with an image of their own caption (caption ids)
    among their k nearest database images by cosine, for k in CAPTION_RECALL_AT. Queries whose caption has no
    database image are left out."""
    db, queries = normalise(db), normalise(queries)
    has_match = np.isin(query_caption, db_caption)
    queries, query_caption = queries[has_match], query_caption[has_match]
    if not len(queries):
        raise ValueError("no query caption has an image in the database")
    kmax = min(max(CAPTION_RECALL_AT), len(db))
    hits = np.zeros(len(CAPTION_RECALL_AT))
    for start in range(0, len(queries), BLOCK):
        sims = queries[start:start + BLOCK] @ db.T
        top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)
        same = db_caption[top] == query_caption[start:start + BLOCK, None]
        hits += [same[:, :min(k, kmax)].any(1).sum() for k in CAPTION_RECALL_AT]
    return {f"caption_R@{k}": float(h / len(queries)) for k, h in zip(CAPTION_RECALL_AT, hits)}


def caption_alignment(features: np.ndarray, caption: np.ndarray, caption_embeddings: np.ndarray, seed: int) -> float:
    """Spearman correlation, over ALIGNMENT_PAIRS random pairs (i, j) of images with different captions, between
    cos(f_i, f_j) of the image features and cos(e_a(i), e_a(j)) of their caption embeddings (caption ids a index
    the unit-norm rows of `caption_embeddings`): does the encoder order image pairs as their captions do?"""
    if len(np.unique(caption)) < 3:
        raise ValueError("caption alignment needs images of at least three different captions")
    x = normalise(features)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(x), size=(2, 4 * ALIGNMENT_PAIRS))
    keep = caption[i] != caption[j]
    i, j = i[keep][:ALIGNMENT_PAIRS], j[keep][:ALIGNMENT_PAIRS]
    image_sim = (x[i] * x[j]).sum(1)
    text_sim = (caption_embeddings[caption[i]] * caption_embeddings[caption[j]]).sum(1)
    return float(spearmanr(image_sim, text_sim).statistic)


def dunn_index(x: np.ndarray, labels: np.ndarray) -> float:
    """min over pairs of distinct clusters of the closest cross-cluster distance, divided by the largest
    intra-cluster diameter (Euclidean); higher is better separated."""
    inter, diameter = np.inf, 0.0
    sq = (x * x).sum(1)
    for start in range(0, len(x), BLOCK):
        rows = slice(start, start + BLOCK)
        dist = np.sqrt(np.maximum(sq[rows, None] + sq[None, :] - 2 * x[rows] @ x.T, 0))
        same = labels[rows, None] == labels[None, :]
        diameter = max(diameter, float(dist[same].max()))
        if (~same).any():
            inter = min(inter, float(dist[~same].min()))
    return inter / diameter if diameter > 0 else float("nan")


def clustering(features: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """k-means (k = number of classes, 10 restarts) on normalised features, scored against the labels by ARI and
    NMI; silhouette (cosine), Davies-Bouldin and Dunn index of the *label* partition, i.e. how well the true classes
    separate in feature space."""
    x = normalise(features)
    clusters = KMeans(n_clusters=len(np.unique(labels)), n_init=10, random_state=seed).fit_predict(x)
    return {
        "kmeans_ari": float(adjusted_rand_score(labels, clusters)),
        "kmeans_nmi": float(normalized_mutual_info_score(labels, clusters)),
        "silhouette": float(silhouette_score(x, labels, metric="cosine", random_state=seed,
                                             sample_size=min(len(x), SILHOUETTE_SAMPLES))),
        "davies_bouldin": float(davies_bouldin_score(x, labels)),
        "dunn": dunn_index(x, labels),
    }


def class_similarities(features: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(C, C) cosine similarities of the class centroids mu_c = normalise(mean of normalised features of class c)."""
    x = normalise(features)
    centroids = np.stack([x[labels == c].mean(0) for c in range(classes)])
    centroids = normalise(centroids)
    return centroids @ centroids.T


def semantic_alignment(learned: np.ndarray, target: np.ndarray) -> float:
    """Spearman rank correlation between the off-diagonal entries (i < j) of the learned and the target class
    similarity matrices: does the encoder order class pairs as their captions do?"""
    upper = np.triu_indices(len(learned), k=1)
    return float(spearmanr(learned[upper], target[upper]).statistic)

