"""Session fixtures: the real packaged model, real WordNet captions, the tuxpaint embed and shards, and the inputs and
uninterrupted references of the prep fault tests, each built once per session. Helpers live in *_helpers.py,
ray_cluster.py and the fault_ledger plugin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from data_helpers import tiny_png, write_tar
from prep_helpers import EMBED_ARGS, EMBED_PARTS, GRAPH_ARGS, run_prep

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download; subprocesses inherit it
pytest_plugins = ["fault_ledger"]


@pytest.fixture(scope="session")
def model_path() -> str:
    from xclr_schemas import default_caption_model

    return default_caption_model()


@pytest.fixture(scope="session")
def encoder(model_path):
    from xclr_prep.encoder import Encoder

    return Encoder(model_path, "cpu", batch_size=64)


@pytest.fixture(scope="session")
def wordnet():
    """The first 20k WordNet captions (key, caption) as a pyarrow Table."""
    from xclr_prep.sample_corpora import wordnet_captions

    return wordnet_captions(limit=20_000)


@pytest.fixture(scope="session")
def tux_embed(tmp_path_factory) -> Path:
    """Root holding ``tars`` (the real tuxpaint stamps as img2dataset tars, 100 per tar) and ``embed`` (their
    `xclr-prep embed` output with category labels)."""
    from xclr_prep.sample_corpora import write_tuxpaint_tars

    root = tmp_path_factory.mktemp("tux")
    write_tuxpaint_tars(root / "tars", per_tar=100)
    run_prep("embed", root / "tars", "--out", root / "embed", "--label-col", "label", "--no-progress")
    return root


@pytest.fixture(scope="session")
def tux_shards(tux_embed) -> Path:
    """Training shards of the tuxpaint stamps with caption embeddings (k 16, groups of 8, 200 samples a shard)."""
    out = tux_embed / "train-shards"
    run_prep("graph", tux_embed / "embed", "--out", out, "--k", "16", "--shard-samples", "200", "--with-embeddings",
             "--no-progress")
    return out


@pytest.fixture
def prep():
    return run_prep


@pytest.fixture(scope="session")
def embed_corpus(tmp_path_factory, wordnet) -> Path:
    """3000 WordNet captions in one Parquet table: EMBED_PARTS parts of 150 rows under EMBED_ARGS."""
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("corpus") / "wordnet.parquet"
    pq.write_table(wordnet.slice(0, 150 * EMBED_PARTS), path)
    return path


@pytest.fixture(scope="session")
def embed_reference(embed_corpus, tmp_path_factory):
    """The uninterrupted `xclr-prep embed` of embed_corpus (local Ray), loaded."""
    from xclr_schemas import load_embed_dir

    out = tmp_path_factory.mktemp("reference") / "out"
    run_prep("embed", embed_corpus, "--out", out, *EMBED_ARGS)
    d = load_embed_dir(out)
    assert len(d.manifest["parts"]) == EMBED_PARTS
    return d


@pytest.fixture(scope="session")
def graph_embed_dir(tmp_path_factory, wordnet) -> Path:
    """The embed directory of 3000 WordNet captions with tiny PNGs in 3 tars (15 search blocks, 50 shards under
    GRAPH_ARGS)."""
    root = tmp_path_factory.mktemp("graph-corpus")
    keys, captions = wordnet.column("key").to_pylist()[:3000], wordnet.column("caption").to_pylist()[:3000]
    for t in range(3):
        members = []
        for i in range(t * 1000, (t + 1) * 1000):
            members += [(f"{keys[i]}.png", tiny_png(i)), (f"{keys[i]}.txt", captions[i].encode())]
        write_tar(root / f"{t:05d}.tar", members)
    run_prep("embed", root, "--out", root / "embed", "--no-progress")
    return root / "embed"


@pytest.fixture(scope="session")
def graph_reference(graph_embed_dir, tmp_path_factory) -> Path:
    """The uninterrupted `xclr-prep graph` of graph_embed_dir under GRAPH_ARGS (local Ray)."""
    out = tmp_path_factory.mktemp("graph-reference") / "out"
    run_prep("graph", graph_embed_dir, "--out", out, *GRAPH_ARGS)
    return out
