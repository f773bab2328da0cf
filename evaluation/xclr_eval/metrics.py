"""Evaluation metrics on backbone features. Features are L2-normalised first (cosine geometry) except for the linear
probe, which standardises them. A database part (kNN database, retrieval database, probe training) and a query part
(kNN queries, retrieval queries, probe test) come either from one labelled set split once, stratified by label, or
from two sets (a held-out query set, e.g. another image style, against a database). `xclr_eval.registry` registers
each with its table column and what it needs, and scores them.

The split, kNN accuracy and caption recall are defined in `xclr_train.eval_metrics` (torch), which the trainer's
in-run evaluation uses too; here they take numpy arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    adjusted_rand_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from xclr_train import eval_metrics
from xclr_train.eval_metrics import BLOCK, KNN_K

__all__ = ["caption_alignment", "caption_recall", "class_similarities", "clustering", "dunn_index", "knn_accuracy",
           "linear_probe_accuracy", "normalise", "retrieval", "semantic_alignment"]
SILHOUETTE_SAMPLES = 5000
ALIGNMENT_PAIRS = 20_000


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_accuracy(db: np.ndarray, db_y: np.ndarray, queries: np.ndarray, query_y: np.ndarray,
                 k: int = KNN_K) -> float:
    """`xclr_train.eval_metrics.knn_accuracy` (similarity-weighted kNN votes) of numpy features and labels."""
    return eval_metrics.knn_accuracy(*map(torch.as_tensor, (db, db_y, queries, query_y)), k)


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
    """`xclr_train.eval_metrics.caption_recall` (caption_R@k, instance retrieval by caption id) of numpy features
    and caption ids."""
    return eval_metrics.caption_recall(*map(torch.as_tensor, (db, db_caption, queries, query_caption)))


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

