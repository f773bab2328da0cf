"""The search core against numpy: exact top-k, self removal with ties, approximate recall, background; the engine
and index recipe chosen, and a search worker refusing a recipe its engine would not build."""

from __future__ import annotations

import re

import numpy as np
import pytest
from data_helpers import assert_topk_equal, brute_force_topk, clustered, write_embed_dir

from xclr_prep import knn, torch_search
from xclr_prep.search_methods import METHODS
from xclr_prep.torch_search import exact_search_torch
from xclr_schemas import EmbeddingRows


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """3000 clustered vectors (dim 64) in three parts, rows 10..14 identical copies of row 5."""
    x = clustered(3000, 64, 30, 0.6, seed=1)
    x[10:15] = x[5]
    path = tmp_path_factory.mktemp("small") / "embed"
    write_embed_dir(path, x, parts=3)
    return EmbeddingRows(path), x.astype(np.float16).astype(np.float32)


def test_exact_equals_numpy_brute_force(small, monkeypatch):
    rows, x = small
    monkeypatch.setattr(knn, "DB_BLOCK", 700)  # several database blocks, merged by the heap
    ids = np.arange(rows.n)
    sims, found = knn.exact_neighbors(rows, ids, ids, 16)
    ref_sims, ref_ids = brute_force_topk(x, 16)
    assert_topk_equal(sims, found, ref_sims, ref_ids)
    assert not (found == ids[:, None]).any()
    assert (np.diff(sims, axis=1) <= 1e-6).all()


def test_self_is_dropped_when_an_identical_caption_outranks_it(small):
    rows, _ = small
    twins = np.array([5, 10, 11, 12, 13, 14])
    sims, found = knn.exact_neighbors(rows, twins, np.arange(rows.n), 3)
    for query, row in zip(twins, found):
        assert query not in row and set(row) <= set(twins)
    np.testing.assert_allclose(sims, 1.0, atol=1e-3)


def test_torch_path_equals_faiss_path(small, monkeypatch):
    rows, _ = small
    for module in (knn, torch_search):  # several database blocks: the running best is merged
        monkeypatch.setattr(module, "DB_BLOCK", 1000)
    queries, ids = rows.take(np.arange(0, 3000, 7)), np.arange(rows.n)
    faiss_sims, faiss_ids = knn.exact_search(rows, queries, ids, 9)
    torch_sims, torch_ids = exact_search_torch(rows, queries, ids, 9, "cpu")
    assert_topk_equal(torch_sims, torch_ids, faiss_sims.astype(np.float64), faiss_ids, atol=1e-5)


def test_database_subset_excludes_the_rest(small):
    rows, x = small
    database = np.arange(0, rows.n, 2)
    _, found = knn.exact_neighbors(rows, np.arange(100), database, 5)
    assert np.isin(found, database).all()


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_meets_recall_target_on_clustered_data(tmp_path, method):
    x = clustered(20_000, 64, 200, 0.5, seed=2)
    write_embed_dir(tmp_path / "embed", x)
    rows = EmbeddingRows(tmp_path / "embed")
    ids = np.arange(rows.n)
    index = knn.build_index(rows, ids, METHODS[method].recipe(rows.n, rows.dim, "faiss-cpu"), seed=0)
    tuning = np.arange(0, 20_000, 20)
    params, tuned = knn.tune(index, method, rows, tuning, ids, 10, 0.95)
    assert tuned >= 0.95
    knn.set_search_parameter(index, method, params)
    held_out = np.arange(3, 20_000, 17)
    _, found, _ = knn.index_neighbors(index, rows, held_out, ids, 10)
    ref_sims, _ = brute_force_topk(x.astype(np.float16).astype(np.float32), 10, held_out)
    recall = knn.recall_at_k(rows, held_out, found, ref_sims)
    assert recall >= 0.94
    assert not (found == held_out[:, None]).any()


def test_ivf_returns_caption_ids_and_reranks_after_a_reload(tmp_path):
    """The CPU IVF index numbers its vectors 0..n-1 inside; a database of every other caption must come back as
    those captions' ids, and a reloaded index (FAISS does not save the re-ranking factor) must search alike."""
    import faiss

    x = clustered(6_000, 32, 60, 0.5, seed=3)
    write_embed_dir(tmp_path / "embed", x)
    rows = EmbeddingRows(tmp_path / "embed")
    database = np.arange(1, rows.n, 2)
    recipe = METHODS["ivf"].recipe(len(database), 32, "faiss-cpu")
    assert recipe == "IVF256,PQ16x4fs,Refine(SQfp16)"
    index = knn.build_index(rows, database, recipe, seed=0)
    knn.set_search_parameter(index, "ivf", knn.SearchParams(32, 16))
    queries = np.arange(0, 600, 3)
    sims, found, _ = knn.index_neighbors(index, rows, queries, database, 8)
    assert np.isin(found, database).all()
    ref_sims, _ = knn.exact_neighbors(rows, queries, database, 8)
    assert knn.recall_at_k(rows, queries, found, ref_sims) >= 0.9
    # re-ranked with the fp16 vectors: the similarities returned are the exact ones of the ids returned
    true = np.einsum("nd,nkd->nk", rows.take(queries), rows.take(found.ravel()).reshape(*found.shape, -1))
    np.testing.assert_allclose(sims, true, atol=2e-3)
    faiss.write_index(index, str(tmp_path / "index"))
    again = faiss.read_index(str(tmp_path / "index"))
    knn.set_search_parameter(again, "ivf", knn.SearchParams(32, 16))
    np.testing.assert_array_equal(knn.index_neighbors(again, rows, queries, database, 8)[1], found)


def test_recall_counts_ties_and_misses(small):
    rows, x = small
    ref_sims, ref_ids = brute_force_topk(x, 4)
    queries = np.array([0, 1, 2])
    assert knn.recall_at_k(rows, queries, ref_ids[queries], ref_sims[queries]) == 1.0
    wrong = ref_ids[queries].copy()
    wrong[:, 0] = np.argsort(x[queries] @ x.T, axis=1)[:, 0]  # the least similar caption
    assert knn.recall_at_k(rows, queries, wrong, ref_sims[queries]) == pytest.approx(0.75)


def test_background_similarity_is_the_mean_over_pairs(small):
    rows, x = small
    sims = x.astype(np.float64) @ x.T
    off_diagonal = sims[~np.eye(len(x), dtype=bool)]
    mean, std = knn.background_similarity(rows, np.arange(rows.n), 200_000, seed=0)
    assert mean == pytest.approx(off_diagonal.mean(), abs=3 * off_diagonal.std() / np.sqrt(200_000) + 1e-3)
    assert std == pytest.approx(off_diagonal.std(), rel=0.05)


def test_a_search_worker_refuses_a_plan_its_engine_would_not_build(tmp_path):
    """A search worker builds the index its graph's plan records; on a node whose FAISS would build another (a plan
    resolved where the faiss-gpu wheel is installed, met on a faiss-cpu node) it refuses to start."""
    import faiss

    from xclr_prep.errors import PrepError
    from xclr_prep.search_stage import GraphPlan, SearchWorker

    write_embed_dir(tmp_path / "embed", clustered(1_000, 32, 10, 0.5, seed=1))
    invalid = np.array([7], dtype=np.int64)
    # A worker sets OpenMP's thread count for its whole process, torch's included: in this test process, keep it
    # as it is, or later in-process training runs would reduce in another order than the runs they are compared to.
    threads = faiss.omp_get_max_threads()

    def worker(recipe: str) -> SearchWorker:
        plan = GraphPlan("xclr.graph/test", "0" * 64, 5, "ivf", 0.95, 512, "cpu", 0, recipe)
        return SearchWorker(str(tmp_path / "embed"), str(tmp_path / "graph"), plan, invalid, "cpu", threads)

    assert worker(METHODS["ivf"].recipe(999, 32, "faiss-cpu")).engines()["search"] == "faiss-cpu"
    gpu_recipe = METHODS["ivf"].recipe(999, 32, "faiss-gpu")
    refusal = rf"engine \(faiss-cpu\) does not build the graph's index '{re.escape(gpu_recipe)}'"
    with pytest.raises(PrepError, match=refusal):
        worker(gpu_recipe)
