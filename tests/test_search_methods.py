"""The search-method registry: engines, FAISS recipes, index memory, tuning grids and the `auto` policy."""

from __future__ import annotations

import pytest

from xclr_prep.options import GraphOptions
from xclr_prep.search_methods import CHOICES, EXACT_MAX_CPU, METHODS, auto_method, ivf_lists, method

GIB = 2**30


@pytest.mark.parametrize("name, device, faiss_gpu, engine", [
    ("exact", "cpu", False, "faiss-cpu"), ("ivf", "cpu", False, "faiss-cpu"), ("hnsw", "cpu", False, "faiss-cpu"),
    ("exact", "cpu", True, "faiss-cpu"),  # a CPU worker on a GPU node stays on the CPU
    ("exact", "cuda", True, "faiss-gpu"), ("ivf", "cuda", True, "faiss-gpu"), ("hnsw", "cuda", True, "faiss-cpu"),
    ("exact", "cuda", False, "torch-cuda"), ("ivf", "cuda", False, "faiss-cpu"), ("hnsw", "cuda", False, "faiss-cpu"),
])
def test_engine_follows_the_worker_device_and_the_faiss_build(name, device, faiss_gpu, engine):
    assert METHODS[name].engine(device, faiss_gpu) == engine


def test_an_unknown_method_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown search method 'flat'; choose from exact, ivf, hnsw"):
        method("flat")


def test_index_recipe_by_method_and_engine():
    assert METHODS["ivf"].recipe(1_000_000, 384, "faiss-cpu") == "IVF4096,PQ192x4fs,Refine(SQfp16)"
    assert METHODS["ivf"].recipe(1_000_000, 384, "faiss-gpu") == "IVF4096,SQfp16"
    assert METHODS["ivf"].recipe(1_000, 33, "faiss-cpu") == "IVF128,PQ33x4fs,Refine(SQfp16)"  # odd D: 1-d codes
    assert METHODS["hnsw"].recipe(1_000_000, 384, "faiss-cpu") == "HNSW32"
    assert METHODS["exact"].recipe(1_000_000, 384, "faiss-gpu") == ""


def test_ivf_lists_follow_the_autofaiss_range():
    assert ivf_lists(1_000) == 128
    assert ivf_lists(3_000_000) == 8192
    assert ivf_lists(10) == 16 and ivf_lists(10**12) == 65_536


def test_index_bytes_per_vector():
    n, dim = 1_000_000, 384
    assert METHODS["exact"].index_bytes(n, dim) == 0
    assert METHODS["ivf"].index_bytes(n, dim) == n * (96 + 768 + 8) + 4096 * dim * 4
    assert METHODS["hnsw"].index_bytes(n, dim) == n * (1536 + 256 + 8)


def test_tuning_grids():
    assert METHODS["ivf"].grid(nlist=128, k=10) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert METHODS["hnsw"].grid(nlist=0, k=10) == [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    assert METHODS["hnsw"].grid(nlist=0, k=40) == [64, 128, 256, 512, 1024, 2048, 4096]
    assert METHODS["exact"].grid(nlist=0, k=10) == [] and METHODS["exact"].parameter is None


def test_auto_picks_exact_while_cheap_then_the_index_that_fits():
    big = EXACT_MAX_CPU + 1
    assert auto_method("cpu", EXACT_MAX_CPU, 384, 64 * GIB) == "exact"
    assert auto_method("cuda", 10**8, 384, 64 * GIB) == "exact"
    assert auto_method("cpu", big, 384, 64 * GIB) == "ivf"
    # the IVF index must fit in half the smallest node: else exact, which needs only a block
    needed = METHODS["ivf"].index_bytes(big, 384)
    assert auto_method("cpu", big, 384, 2 * needed) == "ivf"
    assert auto_method("cpu", big, 384, 2 * needed - 1) == "exact"


def test_auto_never_picks_a_method_marked_so():
    never = [m for m in METHODS.values() if not m.auto]
    assert never, "hnsw is not for auto"
    picks = {auto_method("cpu", n, 384, mem) for n in (10**5, 10**6, 10**7, 10**8) for mem in (GIB, 64 * GIB, 2**50)}
    assert picks.isdisjoint(m.name for m in never)


def test_the_command_line_offers_exactly_auto_and_the_registry():
    assert CHOICES == ("auto", *METHODS)
    import click

    from xclr_prep.cli import graph
    index = next(p for p in graph.params if p.name == "method")
    assert index.opts == ["--index"] and isinstance(index.type, click.Choice)
    assert tuple(index.type.choices) == CHOICES
    for m in METHODS.values():
        assert f"{m.name}: {m.help}" in index.help


def test_an_unknown_index_is_refused_when_the_options_are_built(tmp_path):
    from xclr_prep.errors import PrepError

    with pytest.raises(PrepError, match="--index must be one of auto, exact, ivf, hnsw, got 'flat'"):
        GraphOptions(embed_dir=tmp_path, out=tmp_path, method="flat")
