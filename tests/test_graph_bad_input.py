"""`xclr-prep graph` on bad input: one-line errors, or skipped and counted; approximate recall as measured."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from data_helpers import brute_force_topk, clustered, tiny_png, write_embed_dir, write_tar
from prep_helpers import prep_error, run_prep

from xclr_prep import knn
from xclr_prep.graph_stage import check_embeddings
from xclr_prep.search_methods import METHODS
from xclr_schemas import EmbeddingRows, load_graph, read_manifest, read_shards_manifest
from xclr_schemas.out_lock import LOCK

FAST = ["--no-progress"]


def error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("xclr-prep: error: ")
    return lines[-1]


def test_single_caption(tmp_path):
    write_embed_dir(tmp_path / "embed", clustered(1, 16, 1, 0.1), parts=1)
    error = prep_error("graph", tmp_path / "embed", "--out", tmp_path / "out", *FAST)
    assert "needs at least 2 unique captions with valid embeddings, this one has 1" in error


def test_other_schema_version_and_incomplete_embed_dir(tmp_path):
    write_embed_dir(tmp_path / "embed", clustered(50, 16, 2, 0.3))
    manifest = json.loads((tmp_path / "embed" / "manifest.json").read_text())
    (tmp_path / "embed" / "manifest.json").write_text(json.dumps({**manifest, "schema_version": "xclr.embed/0"}))
    error = prep_error("graph", tmp_path / "embed", "--out", tmp_path / "out", *FAST)
    assert "has schema version 'xclr.embed/0', this xclr reads 'xclr.embed/1'" in error
    (tmp_path / "embed" / "manifest.json").unlink()
    assert "is not a complete embed directory" in prep_error("graph", tmp_path / "embed", "--out", tmp_path / "out")
    write_embed_dir(tmp_path / "e2", clustered(50, 16, 2, 0.3))
    (tmp_path / "e2" / "embeddings" / "part-00001.npy").unlink()
    assert "part 1 is missing" in prep_error("graph", tmp_path / "e2", "--out", tmp_path / "out", *FAST)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [LOCK]  # nothing but the command's lock


def test_a_reused_graph_takes_no_search_options(tmp_path):
    write_embed_dir(tmp_path / "embed", clustered(50, 16, 2, 0.3))
    for option in (["--k", "4"], ["--index", "exact"], ["--search-seed", "1"]):
        error = prep_error("graph", tmp_path / "embed", "--out", tmp_path / "out", "--graph", tmp_path / "embed",
                           *option, *FAST)
        assert "--graph reuses a graph as it is: drop --k, --index and --search-seed" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a whole command (the fast lane, -m "not slow", leaves it out)
def test_out_dir_that_is_not_ours(tmp_path):
    write_embed_dir(tmp_path / "embed", clustered(50, 16, 2, 0.3))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    proc = run_prep("graph", tmp_path / "embed", "--out", tmp_path / "out", *FAST, check=False)
    assert "is not empty and is not an xclr shards directory" in error_line(proc)


@pytest.mark.slow  # a whole command (the fast lane, -m "not slow", leaves it out)
def test_nan_rows_missing_and_undecodable_images_are_skipped_and_counted(tmp_path):
    x = clustered(400, 32, 8, 0.4)
    write_embed_dir(tmp_path / "embed", x)
    part = tmp_path / "embed" / "embeddings" / "part-00000.npy"
    emb = np.load(part)
    emb[7] = np.nan
    np.save(part, emb)
    members = [(f"s{i:06d}.png", b"not an image at all" if i in (4, 5) else tiny_png(i))
               for i in range(400) if i != 3]
    write_tar(tmp_path / "embed" / "images.tar", members)

    run_prep("graph", tmp_path / "embed", "--out", tmp_path / "out", "--k", "8", *FAST)
    manifest = read_shards_manifest(tmp_path / "out")
    assert manifest["counts"]["skipped"] == {"caption_embedding_invalid": 1, "image_missing": 1,
                                             "image_undecodable": 2}
    assert manifest["counts"]["written"] == 396 and manifest["counts"]["samples_in"] == 400
    assert sorted(manifest["skipped_examples"]["image_undecodable"]) == ["s000004", "s000005"]
    graph = load_graph(tmp_path / "out" / "graph")
    assert graph.manifest["invalid_captions"] == {"count": 1, "ids": [7]}
    assert (graph.neighbors["id"][7] == -1).all() and np.isnan(graph.neighbors["sim"][7]).all()
    others = np.delete(graph.neighbors["id"], 7, axis=0)
    assert (others >= 0).all() and not (others == 7).any()
    assert sum(json.loads((tmp_path / "out" / "sizes.json").read_text()).values()) == 396


def test_the_driver_unmaps_the_embeddings_it_checked(tmp_path):
    """check_embeddings reads every row (so every page of the mapped parts) and returns their shape and invalid ids
    only: no part file stays mapped in this process, where its pages would count in the driver's RSS."""
    x = clustered(3_000, 64, 10, 0.5, seed=1)
    x[5] = np.nan
    write_embed_dir(tmp_path / "embed", x)
    parts = sorted(str(p) for p in (tmp_path / "embed" / "embeddings").glob("*.npy"))

    def mapped() -> set[str]:
        return {line.split()[-1] for line in open("/proc/self/maps") if line.rstrip().endswith(".npy")}

    rows = EmbeddingRows(tmp_path / "embed")
    assert mapped() >= set(parts)  # what would stay mapped with rows held
    del rows
    checked = check_embeddings(tmp_path / "embed", read_manifest(tmp_path / "embed"))
    assert (checked.n, checked.dim, checked.invalid.tolist(), checked.valid) == (3_000, 64, [5], 2_999)
    assert not mapped() & set(parts)


@pytest.mark.slow  # a whole command (the fast lane, -m "not slow", leaves it out)
@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_graph_reports_its_measured_recall(tmp_path, method):
    x = clustered(4_000, 64, 100, 0.5, seed=3)
    write_embed_dir(tmp_path / "embed", x)
    run_prep("graph", tmp_path / "embed", "--out", tmp_path / "out", "--index", method, "--k", "10", *FAST)
    graph = load_graph(tmp_path / "out" / "graph")
    assert graph.manifest["method"] == method and graph.manifest["index"]["parameter"] in ("nprobe", "efSearch")
    assert graph.manifest["engines"] == [{"search": "faiss-cpu", "exact": "faiss-cpu"}]
    # the index recipe is part of the fingerprinted plan: a graph is never resumed with another index
    plan = graph.manifest["plan"]
    assert plan["index"] == METHODS[method].recipe(len(x), 64, "faiss-cpu")
    assert graph.manifest["fingerprint"] == hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    rows = EmbeddingRows(tmp_path / "embed")
    x16 = x.astype(np.float16).astype(np.float32)
    ids = np.arange(len(x))
    recall = np.mean([knn.recall_at_k(rows, ids[s:s + 2000], np.asarray(graph.neighbors["id"][s:s + 2000]),
                                      brute_force_topk(x16, 10, ids[s:s + 2000])[0]) for s in range(0, len(x), 2000)])
    assert recall >= 0.95
    assert graph.manifest["recall"]["measured"] == pytest.approx(recall, abs=0.01)
    assert graph.manifest["recall"]["queries"] == 2000


def test_a_store_error_is_prep_s_one_line_also_from_a_ray_worker(tmp_path, monkeypatch):
    """A StorageError (a UserError) is printed as xclr-prep's own one line, exit 2; raised inside a Ray actor, its
    message (naming the URL), not the first line of Ray's wrapper, is the error (raypool.user_error)."""
    import ray

    from xclr_prep.raypool import task_error
    from xclr_schemas.retry import RETRY_SECONDS_VAR, StorageError

    monkeypatch.setenv(RETRY_SECONDS_VAR, "soon")
    error = prep_error("embed", "memory://corpus/a.tar", "--out", tmp_path / "out")
    assert error == f"xclr-prep: error: {RETRY_SECONDS_VAR} must be a number of seconds, 0 or more, got 'soon'"
    down = StorageError("s3://b/a.tar: the store failed 9 tries in 120.0 s; last: ConnectionError: refused")
    e = ray.exceptions.RayTaskError("ShardWorker.locate", f"Traceback ...\nxclr_schemas.retry.StorageError: {down}",
                                    down)
    assert str(task_error(e, "locate of unit 3")) == f"locate of unit 3 failed: {down}"
