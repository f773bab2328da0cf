"""`xclr-prep graph` end to end on real data: shards read back with webdataset and tar, the graph against numpy."""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections import Counter

import numpy as np
import pytest
import webdataset as wds
from data_helpers import assert_topk_equal, brute_force_topk
from prep_helpers import TUX_GRAPH_ARGS, prep_error, run_prep

from xclr_prep.groups import in_group_neighbors
from xclr_schemas import load_embed_dir, load_graph, load_npy, read_shards_manifest

pytestmark = pytest.mark.slow  # whole commands end to end (the fast lane, -m "not slow", leaves them out)

FAST = ["--no-progress"]


def read_shards(path):
    """Every sample of every shard listed in sizes.json, via the plain webdataset library."""
    sizes = json.loads((path / "sizes.json").read_text())
    urls = [str(path / name) for name in sizes]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    return sizes, samples


def test_shards_hold_every_sample_once_with_its_graph_row(tux_embed, tux_shards):
    embed = load_embed_dir(tux_embed / "embed")
    graph = load_graph(tux_shards / "graph")
    manifest = read_shards_manifest(tux_shards)
    sizes, samples = read_shards(tux_shards)

    keys = [s["__key__"] for s in samples]
    assert sorted(keys) == sorted(embed.samples.column("key").to_pylist())  # every sample exactly once
    assert all("." not in k for k in keys)
    per_shard = Counter(s["__url__"].rsplit("/", 1)[1] for s in samples)
    assert per_shard == Counter(sizes) and sum(sizes.values()) == manifest["counts"]["written"] == len(keys)
    assert max(sizes.values()) <= 200
    for name, count in sizes.items():  # the same counts through tar(1)
        listing = subprocess.run(["tar", "-tf", str(tux_shards / name)], capture_output=True, text=True,
                                 check=True).stdout.split()
        assert sum(m.endswith(".nbr.npy") for m in listing) == count

    row_of = {k: i for i, k in enumerate(embed.samples.column("key").to_pylist())}
    for s in samples:
        i = row_of[s["__key__"]]
        meta = json.loads(s["json"])
        cid = embed.samples.column("caption_id")[i].as_py()
        assert meta["caption_id"] == cid and meta["label"] == embed.samples.column("label")[i].as_py()
        assert s["txt"].decode() == embed.captions[cid]
        nbr = load_npy(s["nbr.npy"])
        assert nbr.dtype == np.dtype([("id", "<i8"), ("sim", "<f4")]) and nbr.shape == (16,)
        assert np.array_equal(nbr, graph.neighbors[cid])
        assert s["png"] == tarfile.open(embed.samples.column("image_source")[i].as_py()).extractfile(
            embed.samples.column("image_member")[i].as_py()).read()


def test_exact_graph_equals_numpy_brute_force(tux_embed, tux_shards):
    embed = load_embed_dir(tux_embed / "embed")
    graph = load_graph(tux_shards / "graph")
    ref_sims, ref_ids = brute_force_topk(embed.embeddings.astype(np.float32), 16)
    assert_topk_equal(graph.neighbors["sim"], graph.neighbors["id"], ref_sims, ref_ids)
    m = graph.manifest
    assert m["method"] == "exact" and m["recall"]["measured"] == 1.0
    assert m["engines"] == [{"search": "faiss-cpu", "exact": "faiss-cpu"}] and m["run"]["device"] == "cpu"
    x = embed.embeddings.astype(np.float64)
    off_diagonal = (x @ x.T)[~np.eye(len(x), dtype=bool)]
    assert m["background_similarity"]["mean"] == pytest.approx(off_diagonal.mean(), abs=0.003)
    assert m["kth_similarity_mean"] == pytest.approx(ref_sims[:, -1].mean(), abs=1e-3)


def test_groups_are_contiguous_and_hold_graph_neighbours(tux_shards):
    manifest = read_shards_manifest(tux_shards)
    neighbor_ids = load_graph(tux_shards / "graph").neighbors["id"]
    _, samples = read_shards(tux_shards)
    groups = np.array([json.loads(s["json"])["group"] for s in samples])
    captions = np.array([json.loads(s["json"])["caption_id"] for s in samples])
    shard_of = [s["__url__"] for s in samples]
    assert (np.diff(groups) >= 0).all()  # contiguous, numbered along the shards
    assert all(len({shard_of[i] for i in np.flatnonzero(groups == g)}) == 1 for g in np.unique(groups))
    assert np.bincount(groups).max() <= 8
    measured = in_group_neighbors(captions, groups, neighbor_ids).mean()
    assert manifest["groups"]["in_group_neighbors_mean"] == pytest.approx(measured)
    assert measured >= 0.5 * (8 - 1)


def test_repack_reuses_the_graph(tux_embed, tux_shards, tmp_path):
    neighbors = tux_shards / "graph" / "neighbors.npy"
    before = neighbors.stat().st_mtime_ns
    out = tmp_path / "plain"
    run_prep("graph", tux_embed / "embed", "--out", out, "--graph", tux_shards / "graph", "--group-size", "1",
             "--with-embeddings", *FAST)
    assert neighbors.stat().st_mtime_ns == before and not (out / "graph").exists()
    manifest = read_shards_manifest(out)
    assert manifest["graph"]["path"] == str(tux_shards / "graph")
    assert manifest["groups"]["size_mean"] == 1 and manifest["groups"]["in_group_neighbors_mean"] == 0
    embed = load_embed_dir(tux_embed / "embed")
    _, samples = read_shards(out)
    assert len(samples) == manifest["counts"]["written"] == embed.samples.num_rows
    for s in samples[:50]:
        cid = json.loads(s["json"])["caption_id"]
        emb = load_npy(s["emb.npy"])
        assert emb.dtype == np.float16 and np.array_equal(emb, embed.embeddings[cid])


def test_the_layout_seed_moves_the_layout_not_the_graph(tux_embed, tux_shards, tmp_path):
    """--seed shuffles groups only: the same search (--search-seed) gives the same graph, byte for byte."""
    out = tmp_path / "reseeded"
    run_prep("graph", tux_embed / "embed", "--out", out, *TUX_GRAPH_ARGS, "--seed", "7")
    graph, other = tux_shards / "graph", out / "graph"
    assert (graph / "neighbors.npy").read_bytes() == (other / "neighbors.npy").read_bytes()
    assert load_graph(graph).manifest["background_similarity"] == load_graph(other).manifest["background_similarity"]
    keys = [[s["__key__"] for s in read_shards(root)[1]] for root in (tux_shards, out)]
    assert sorted(keys[0]) == sorted(keys[1]) and keys[0] != keys[1]


def test_rerun_of_a_complete_dir_does_nothing_and_other_options_are_refused(tux_embed, tux_shards):
    again = run_prep("graph", tux_embed / "embed", "--out", tux_shards, *TUX_GRAPH_ARGS)
    assert "already complete" in again.stdout
    other = run_prep("graph", tux_embed / "embed", "--out", tux_shards, *TUX_GRAPH_ARGS, "--group-size", "4",
                     check=False)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith("xclr-prep: error: ")
    assert "holds shards from other inputs or options" in other.stderr and "--graph" in other.stderr


def test_class_label_mode_gives_the_dense_class_graph(fashion_embed, tmp_path):
    embed = fashion_embed / "embed"
    run_prep("graph", embed, "--out", tmp_path / "shards", *FAST)  # k defaults to min(32, U - 1)
    graph = load_graph(tmp_path / "shards" / "graph")
    assert graph.manifest["k"] == 9
    for c, row in enumerate(graph.neighbors["id"]):
        assert sorted(row) == [i for i in range(10) if i != c]
    manifest = read_shards_manifest(tmp_path / "shards")
    assert manifest["counts"]["written"] == 1000 and manifest["classnames"][0] == "T-shirt/top"
    assert prep_error("graph", embed, "--out", tmp_path / "s2", "--k", "10", *FAST).startswith(
        "xclr-prep: error: --k 10 needs more than 10 unique captions, there are 10 (use --k 9 or less")


def test_images_from_every_source_kind(tmp_path):
    """Parquet image bytes, image files named by a JSONL table, and a .tar.gz all end up in the shards, each
    source split over two embed parts (located part by part)."""
    import gzip
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    from data_helpers import tiny_png, write_tar

    from xclr_prep.sample_corpora import wordnet_captions

    captions = wordnet_captions(90).column("caption").to_pylist()
    corpus = tmp_path / "corpus"
    (corpus / "img").mkdir(parents=True)
    pq.write_table(pa.table({"key": [f"p{i}" for i in range(30)], "caption": captions[:30],
                             "image": [tiny_png(i) for i in range(30)]}), corpus / "bytes.parquet")
    lines = []
    for i in range(30, 60):
        (corpus / "img" / f"{i}.png").write_bytes(tiny_png(i))
        lines.append(json.dumps({"key": f"j{i}", "caption": captions[i], "image": f"img/{i}.png"}))
    (corpus / "files.jsonl").write_text("\n".join(lines) + "\n")
    write_tar(tmp_path / "t.tar", [m for i in range(60, 90) for m in ((f"t{i}.png", tiny_png(i)),
                                                                       (f"t{i}.txt", captions[i].encode()))])
    with open(tmp_path / "t.tar", "rb") as src, gzip.open(corpus / "t.tar.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    run_prep("embed", corpus, "--out", tmp_path / "embed", "--image-col", "image", "--part-size", "20", *FAST)
    run_prep("graph", tmp_path / "embed", "--out", tmp_path / "shards", "--k", "4", *FAST)
    stage = tmp_path / "shards" / "layout" / "stage"
    assert len(list(stage.glob("*.tar"))) == 1  # the .tar.gz, decompressed once for both of its parts
    assert len(list(stage.glob("*.blob"))) == 2  # the image column, the rows of each part
    _, samples = read_shards(tmp_path / "shards")
    expected = {f"{p}{i}": tiny_png(i) for p, r in (("p", range(30)), ("j", range(30, 60)), ("t", range(60, 90)))
                for i in r}
    assert {s["__key__"]: s["png"] for s in samples} == expected
    assert read_shards_manifest(tmp_path / "shards")["counts"]["skipped_total"] == 0
