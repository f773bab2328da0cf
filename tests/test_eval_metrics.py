"""xclr_eval.metrics against loop references written from their definitions, and on data whose answer is known;
xclr_eval.registry.score, which computes the registered metrics, on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from xclr_eval import metrics
from xclr_eval.registry import Inputs, score
from xclr_train.eval_metrics import split


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
    train, test = split(y, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
    assert np.bincount(y[train]).tolist() == np.bincount(y[test]).tolist() == [5, 10, 3, 1]
    with pytest.raises(ValueError, match="single sample"):
        split(np.array([0, 0, 1]), seed=0)


def test_score_tells_separated_classes_from_noise():
    rng = np.random.default_rng(5)
    text = unit(rng.normal(size=(5, 16)))
    x, y = blobs(40, 5, 32, spread=0.05)
    good = score(Inputs(features=x, labels=y, text=text, seed=0)).metrics
    for key in ("knn_accuracy", "linear_probe_accuracy", "precision@1", "mAP", "kmeans_ari", "kmeans_nmi"):
        assert good[key] == pytest.approx(1.0), key
    assert good["silhouette"] > 0.9 and good["dunn"] > 1 and good["davies_bouldin"] < 0.2
    noise = score(Inputs(features=rng.normal(size=x.shape), labels=y, text=text, seed=0)).metrics
    assert noise["knn_accuracy"] < 0.45 and noise["kmeans_ari"] < 0.1 and noise["silhouette"] < 0.05
    with pytest.raises(ValueError, match="no image"):
        score(Inputs(features=x, labels=y, text=unit(rng.normal(size=(6, 16))), seed=0))


def test_caption_recall_equals_loop_reference():
    """Queries whose caption the database lacks are left out; R@k counts a same-caption image among the top k."""
    x, captions = blobs(6, 30, 8, spread=1.0, seed=3)
    db, db_c, q, q_c = x[::2], captions[::2], x[1::2], captions[1::2]
    db, db_c = db[db_c != 7], db_c[db_c != 7]  # caption 7's queries have no match
    hits = {1: [], 5: []}
    for query, caption in zip(unit(q), q_c):
        if caption == 7:
            continue
        order = np.argsort(-(unit(db) @ query))
        for k in hits:
            hits[k].append((db_c[order[:k]] == caption).any())
    got = metrics.caption_recall(db, db_c, q, q_c)
    assert got == pytest.approx({"caption_R@1": np.mean(hits[1]), "caption_R@5": np.mean(hits[5])})
    assert 0.2 < got["caption_R@1"] < got["caption_R@5"] < 1.0
    with pytest.raises(ValueError, match="no query caption"):
        metrics.caption_recall(db, db_c + 1000, q, q_c)


def test_caption_alignment_follows_the_caption_geometry():
    """Image features that are their captions' embeddings (plus noise) align; features unrelated to them do not."""
    rng = np.random.default_rng(0)
    text = unit(rng.normal(size=(40, 16)))
    caption = rng.integers(0, 40, size=600)
    aligned = metrics.caption_alignment(text[caption] + 0.05 * rng.normal(size=(600, 16)), caption, text, seed=0)
    unrelated = metrics.caption_alignment(rng.normal(size=(600, 16)), caption, text, seed=0)
    assert aligned > 0.95 and abs(unrelated) < 0.05
    with pytest.raises(ValueError, match="three different captions"):
        metrics.caption_alignment(text[:4], np.array([0, 0, 1, 1]), text, seed=0)


def test_score_with_a_query_set_uses_it_for_every_query_metric():
    """With `query`, the database is exactly the other rows: moving the query rows' class structure changes the
    query metrics, a further label field gets its own kNN and probe, caption metrics appear with captions."""
    x, y = blobs(20, 4, 16, spread=0.05)
    rng = np.random.default_rng(2)
    text = unit(rng.normal(size=(4, 8)))
    query = np.arange(len(y)) % 2 == 1
    coarse = y // 2
    caption = np.arange(len(y)) // 2  # each database row shares its caption with the next (query) row
    good = score(Inputs(features=x, labels=y, text=text, seed=0, query=query, more_labels={"coarse": coarse},
                        caption=caption, caption_embeddings=unit(rng.normal(size=(len(y) // 2, 8))))).metrics
    assert good["knn_accuracy"] == 1.0 and good["knn_accuracy@coarse"] == 1.0
    assert good["linear_probe_accuracy@coarse"] == 1.0 and good["caption_R@5"] > 0.2
    shuffled = x.copy()
    shuffled[query] = rng.permutation(x[query])  # queries land on other classes' blobs
    bad = score(Inputs(features=shuffled, labels=y, text=text, seed=0, query=query)).metrics
    assert bad["knn_accuracy"] < 0.5 and "caption_R@1" not in bad and "knn_accuracy@coarse" not in bad


@pytest.mark.parametrize("left_out, keys", [
    ({"clustering": False}, {"kmeans_ari", "kmeans_nmi", "silhouette", "davies_bouldin", "dunn"}),
    ({"linear_probe": False}, {"linear_probe_accuracy", "linear_probe_accuracy@coarse"}),
])
def test_score_without_clustering_or_probes_leaves_out_exactly_their_metrics(left_out, keys):
    x, y = blobs(10, 3, 8, spread=0.1)
    text = unit(np.random.default_rng(1).normal(size=(3, 8)))
    coarse = {"coarse": y // 2}
    full = score(Inputs(features=x, labels=y, text=text, seed=0, more_labels=coarse))
    lean = score(Inputs(features=x, labels=y, text=text, seed=0, more_labels=coarse, **left_out))
    assert set(full.metrics) - set(lean.metrics) == keys
    assert all(lean.metrics[k] == full.metrics[k] for k in lean.metrics)
    assert lean.class_similarity == full.class_similarity
