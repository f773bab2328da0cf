"""xclr_eval.metrics against loop references written from their definitions, and on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from xclr_eval import metrics


def blobs(n_per: int, classes: int, dim: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_knn_equals_loop_reference():
    x, y = blobs(40, 4, 8, spread=1.5)
    db, db_y, q, q_y = x[::2], y[::2], x[1::2], y[1::2]
    expected = []
    for query in unit(q):
        sims = unit(db) @ query
        votes = np.zeros(4)
        for j in np.argsort(-sims)[:20]:
            votes[db_y[j]] += sims[j]
        expected.append(votes.argmax())
    assert metrics.knn_accuracy(db, db_y, q, q_y) == pytest.approx(np.mean(np.array(expected) == q_y))
    assert 0.3 < metrics.knn_accuracy(db, db_y, q, q_y) < 1.0  # overlapping blobs: neither trivial nor hopeless


def test_knn_votes_are_weighted_by_similarity():
    """9 close neighbours of class 1 outvote 11 distant ones of class 0 only when votes carry the similarity."""
    angles = np.deg2rad(np.r_[np.full(9, 5.0), np.full(11, 60.0), np.full(5, 180.0)])
    db = np.stack([np.cos(angles), np.sin(angles)], 1)
    db_y = np.r_[np.ones(9), np.zeros(11), np.full(5, 2)].astype(int)
    assert metrics.knn_accuracy(db, db_y, np.array([[1.0, 0.0]]), np.array([1])) == 1.0


def test_retrieval_equals_loop_reference_and_sklearn_ap():
    x, y = blobs(30, 5, 6, spread=1.2, seed=1)
    db, db_y, q, q_y = x[::2], y[::2], x[1::2], y[1::2]
    p1, p10, r10, ap = [], [], [], []
    for query, label in zip(unit(q), q_y):
        sims = unit(db) @ query
        rel = db_y[np.argsort(-sims)] == label
        p1.append(rel[0])
        p10.append(rel[:10].sum() / 10)
        r10.append(rel[:10].sum() / rel.sum())
        ap.append(average_precision_score(db_y == label, sims))
    got = metrics.retrieval(db, db_y, q, q_y)
    assert got["precision@1"] == pytest.approx(np.mean(p1))
    assert got["precision@10"] == pytest.approx(np.mean(p10))
    assert got["recall@10"] == pytest.approx(np.mean(r10))
    assert got["mAP"] == pytest.approx(np.mean(ap))


def test_dunn_equals_brute_force():
    x, y = blobs(8, 3, 4, spread=0.8, seed=2)
    inter = min(np.linalg.norm(a - b) for i, a in enumerate(x) for j, b in enumerate(x) if y[i] != y[j])
    diameter = max(np.linalg.norm(a - b) for i, a in enumerate(x) for j, b in enumerate(x) if y[i] == y[j])
    assert metrics.dunn_index(x, y) == pytest.approx(inter / diameter, rel=1e-6)


def test_class_similarities_equal_centroid_loop():
    x, y = blobs(10, 3, 5, spread=1.0, seed=3)
    centroids = [unit(x[y == c]).mean(0) for c in range(3)]
    expected = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in centroids] for a in centroids])
    np.testing.assert_allclose(metrics.class_similarities(x, y, 3), expected, atol=1e-12)


def test_semantic_alignment_is_the_rank_correlation_of_class_pairs():
    rng = np.random.default_rng(4)
    target = np.corrcoef(rng.normal(size=(6, 20)))
    upper = np.triu_indices(6, 1)
    assert metrics.semantic_alignment(np.exp(3 * target), target) == pytest.approx(1.0)  # same order of pairs
    assert metrics.semantic_alignment(-target, target) == pytest.approx(-1.0)
    noisy = target + rng.normal(scale=0.3, size=target.shape)
    ranks = [np.argsort(np.argsort(m[upper])) for m in (noisy, target)]
    assert metrics.semantic_alignment(noisy, target) == pytest.approx(np.corrcoef(*ranks)[0, 1])


def test_split_is_stratified_disjoint_and_complete():
    y = np.repeat(np.arange(4), [10, 20, 6, 2])
    train, test = metrics.split(y, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
    assert np.bincount(y[train]).tolist() == np.bincount(y[test]).tolist() == [5, 10, 3, 1]
    with pytest.raises(ValueError, match="single sample"):
        metrics.split(np.array([0, 0, 1]), seed=0)


def test_evaluate_tells_separated_classes_from_noise():
    rng = np.random.default_rng(5)
    text = unit(rng.normal(size=(5, 16)))
    x, y = blobs(40, 5, 32, spread=0.05)
    good = metrics.evaluate(x, y, text, seed=0)
    for key in ("knn_accuracy", "linear_probe_accuracy", "precision@1", "mAP", "kmeans_ari", "kmeans_nmi"):
        assert good[key] == pytest.approx(1.0), key
    assert good["silhouette"] > 0.9 and good["dunn"] > 1 and good["davies_bouldin"] < 0.2
    noise = metrics.evaluate(rng.normal(size=x.shape), y, text, seed=0)
    assert noise["knn_accuracy"] < 0.45 and noise["kmeans_ari"] < 0.1 and noise["silhouette"] < 0.05
    with pytest.raises(ValueError, match="no image"):
        metrics.evaluate(x, y, unit(rng.normal(size=(6, 16))), seed=0)
