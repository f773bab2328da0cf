"""The cost model's fit (benchmarks/cost_fit.py) and predictions (benchmarks/cost_predict.py) on fixed figures,
worked by hand from the formulas of cost_predict's docstring, and the committed benchmarks/results/cost_model.json
and cost_model.md reproduced from the coefficients and runs they store. Nothing is measured or run."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import cost_predict  # noqa: E402
from cost_fit import CalibrationRuns, calibrate  # noqa: E402
from cost_predict import (  # noqa: E402
    Cluster,
    Coefficients,
    EmbedCosts,
    GpuTraining,
    HnswCosts,
    IvfCosts,
    Line,
    Memory,
    QueryFit,
    SearchCosts,
    ShardCosts,
    TrainCosts,
    TrainMemory,
    from_json,
    predict,
    predict_cluster,
    with_image_bytes,
)
from cost_report import markdown, median_errors  # noqa: E402

from xclr_prep.search_methods import METHODS  # noqa: E402
from xclr_prep.search_stage import RECALL_QUERIES, TUNING_QUERIES  # noqa: E402

D = 384
GEMM, ETA = 2.56e9, 0.9
FLOPS = GEMM * ETA  # exact search's FLOP/s: 2.304e9
QUERY_FIT = {"q0": 1e-6, "per_list": 2e-7, "per_code": 4e-9, "per_candidate": 1e-7}


def flat(obj, prefix: str = "") -> dict:
    """A nested dict as {"a.b.c": number}, for pytest.approx."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: obj}


def peaks(phase: str, total: float, actors: float, n_actors: int) -> dict:
    return {phase: {"total": total, "actors": actors, "n_actors": n_actors}}


def fake_runs() -> CalibrationRuns:
    """Two calibration sizes, n = 1000 and 3000 samples, of which U = 500 and 1500 unique captions; every figure
    chosen so that the fit is easy to work by hand (test_calibrate_fits_the_hand_worked_coefficients)."""
    def search_seconds(u: int) -> float:  # 3 s besides the exact search of the graph and its recall queries
        return 3.0 + (u + RECALL_QUERIES) * u * 2 * D / FLOPS

    embeds = [{"n": n, "cores": 2, "unique_captions": u, "wall_seconds": wall, "disk_bytes": disk,
               "peaks": peaks("all", base + 80 * n, actor, 1)}
              for n, u, wall, disk, base, actor in ((1000, 500, 12.0, 5000, 1.0e9, 400e6),
                                                    (3000, 1500, 16.0, 13000, 1.2e9, 600e6))]
    graphs = []
    for n, u, base, after, actors_after, layout, locate in ((1000, 500, 800e6, 700e6, 400e6, 0.5, 3.0),
                                                            (3000, 1500, 900e6, 800e6, 600e6, 0.9, 2.0)):
        # the N terms (cost_predict docstring): search 9 D u anon + 2 D u and 12 k u mapped once; shards
        # (2 writers) 200 n anon + 12 k u mapped 3 times + 150 n row bytes twice = 500 n + 1152 u
        graphs.append({"n": n, "captions": u, "search_seconds": search_seconds(u),
                       "shards_seconds": layout + locate, "wall_seconds": search_seconds(u) + layout + locate + 6.0,
                       "layout_seconds": layout, "locate_write_seconds": locate,
                       "graph_disk_bytes": 200 * u, "shards_disk_bytes": 500_000 + 1500 * n,
                       "layout_disk_bytes": 150 * n,
                       "peaks": {**peaks("before", base + 9 * D * u + 2 * D * u + 12 * 32 * u, 300e6, 1),
                                 **peaks("after", after + 500 * n + 1152 * u, actors_after, 2)}})
    trains = [{"steps": 5, "wall_seconds": 10.0, "disk_bytes": 10, "peaks": peaks("all", 1e9, 0, 0)},
              {"steps": 25, "wall_seconds": 20.0, "disk_bytes": 20, "peaks": peaks("all", 2e9, 0, 0)}]
    ivf = {"captions": 1024, "search_seconds": 30.0,
           "index": {"value": 8, "nlist": 128, "refine": 4, "build_seconds": 5.0, "tune_seconds": 2.0}}
    graph_bench = {"exact": {"fraction_of_gemm": ETA},
                   "hnsw": {"n": 10_000, "build_seconds": 4.0, "tune_seconds": 1.0, "seconds": 8.0}}
    return CalibrationRuns(embeds, graphs, trains, {"checkpoint_bytes": 1000}, {"flops": GEMM}, ivf,
                           {"fit": QUERY_FIT}, graph_bench)


def test_calibrate_fits_the_hand_worked_coefficients():
    got = calibrate(fake_runs())
    nlist0 = 128  # ivf_lists(1024): the power of two nearest 4 sqrt(1024)
    expected = Coefficients(
        cores=2, unique_fraction=0.5, row_bytes=150.0,
        embed=EmbedCosts(seconds=Line(10.0, 0.002), memory=Memory(1.1e9, 1, 500e6), disk=Line(1000.0, 4.0)),
        search=SearchCosts(
            other_seconds=Line(6.0, 0.0), seconds=Line(3.0, 0.0), gemm_flops=GEMM, eta=ETA,
            hnsw=HnswCosts(10_000, 4.0, 1.0, 3.0),
            ivf=IvfCosts(n0=1024, nprobe=8, nlist=128, refine=4,
                         build_rest_seconds=5.0 - 2 * D * (640 * nlist0 + 1024) * nlist0 / GEMM,
                         tune_search_seconds=2.0 - TUNING_QUERIES * 1024 * 2 * D / FLOPS,
                         query_seconds=30.0 - 3.0 - RECALL_QUERIES * 1024 * 2 * D / FLOPS - 5.0 - 2.0,
                         query_fit=QueryFit(**QUERY_FIT)),
            memory=Memory(850e6, 1, 300e6), disk=Line(0.0, 200.0)),
        shards=ShardCosts(layout_seconds=Line(0.3, 0.0002),
                          locate_write_seconds=Line(2.5, 0.0),  # a falling pair: the mean, no slope
                          memory=Memory(750e6, 2, 250e6), disk=Line(500_000.0, 1500.0)),
        train=TrainCosts(Line(7.5, 0.5), TrainMemory(1.5e9), 15.0, 1000))
    assert flat(asdict(got)) == pytest.approx(flat(asdict(expected)), rel=1e-12, abs=1e-9)


def fixed_coefficients() -> Coefficients:
    return Coefficients(
        cores=2, unique_fraction=1.0, row_bytes=100.0,
        embed=EmbedCosts(Line(10.0, 0.002), Memory(1e9, 1, 5e8), Line(1000.0, 800.0)),
        search=SearchCosts(
            other_seconds=Line(6.0, 0.0), seconds=Line(3.0, 0.0), gemm_flops=GEMM, eta=ETA,
            hnsw=HnswCosts(10_000, 4.0, 1.0, 3.0),
            ivf=IvfCosts(1024, 8, 128, 4, 2.0, 1.0, 10.0, QueryFit(**QUERY_FIT)),
            memory=Memory(8e8, 1, 3e8), disk=Line(1000.0, 400.0)),
        shards=ShardCosts(Line(0.3, 1e-5), Line(0.5, 3e-4), Memory(7e8, 2, 2e8), Line(0.0, 4000.0)),
        train=TrainCosts(Line(7.5, 0.5), TrainMemory(1.5e9), 1e7, 1000))


CLUSTER = Cluster("2 nodes x 4 cores", nodes=2, cores=4, memory_gib=64)  # s = 2 / 8, s1 = 2 / 4


def ivf_query(u: float, nlist: int) -> float:
    """q(U) = q0 + q_p nprobe + q_c nprobe U / nlist + q_r refine (k + 1), nprobe 8, refine 4, k 32."""
    return 1e-6 + 2e-7 * 8 + 4e-9 * 8 * u / nlist + 1e-7 * 4 * 33


@pytest.mark.parametrize("u", [100_000, 1_000_000])
def test_predict_search_time_of_each_method(u):
    c = fixed_coefficients()
    fixed = 6.0 + 3.0 + RECALL_QUERIES * u * 2 * D / FLOPS * 0.5  # start, check, recall queries on one node
    log_growth = {100_000: 12.5, 1_000_000: 150.0}[u]  # U log2 U / (1e4 log2 1e4): 10 x 5/4, 100 x 6/4
    nlist = {100_000: 1024, 1_000_000: 4096}[u]  # the power of two nearest 4 sqrt(U)
    growth = ivf_query(u, nlist) / ivf_query(1024, 128)
    ivf = ((2.0 + 2 * D * (640 * nlist + u) * nlist / GEMM + TUNING_QUERIES * u * 2 * D / FLOPS + 1.0 * growth) * 0.5
           + 10.0 * u / 1024 * growth * 0.25)
    expected = {"exact": fixed + u * u * 2 * D / FLOPS * 0.25,
                "hnsw": fixed + (4.0 + 1.0) * log_growth * 0.5 + 3.0 * log_growth * 0.25,
                "ivf": fixed + ivf}
    for method, seconds in expected.items():
        got = predict(c, CLUSTER, u, method=method)["graph search"]
        assert got["method"] == method
        assert got["seconds"] == pytest.approx(seconds, rel=1e-12)
        assert got["disk"] == pytest.approx(1000.0 + 400.0 * u + METHODS[method].index_bytes(u, D), rel=1e-12)


def test_predict_memory_disk_and_the_other_stages():
    c, n = fixed_coefficients(), 1_000_000
    got = predict(c, CLUSTER, n, method="ivf")
    index = n * (D // 4 + 2 * D + 8) + 4096 * D * 4  # 4-bit codes, fp16 vectors, ids; float32 centroids
    anon = 32_768 * D * 9 + index  # the driver's check block, and the index
    mapped = n * D * 2 + n * 32 * 12  # the embeddings and the neighbour rows, each read by one process at a time
    assert got["graph search"]["rss"] == pytest.approx(8e8 + anon + mapped)
    assert got["graph search"]["resident"] == pytest.approx(8e8 + anon + mapped)
    assert got["embed"] == pytest.approx({"seconds": 10.0 + 0.002 * n * 0.25, "disk": 1000.0 + 800.0 * n,
                                          "rss": 1e9 + 80 * n, "resident": 1e9 + 80 * n, "mapped": 0})
    writers = 4  # one per core of a node; 2 calibrated, 2e8 per more
    mapped = [(n * 32 * 12, 1 + writers), (100.0 * n, writers)]  # the driver unmapped the embeddings
    base = 7e8 + (writers - 2) * 2e8 + 200 * n
    assert got["shard writing"] == pytest.approx({
        "seconds": 0.3 + 1e-5 * n + 0.5 + 3e-4 * n * 0.25, "disk": 4000.0 * n,
        "rss": base + sum(size * readers for size, readers in mapped),
        "resident": base + sum(size for size, _ in mapped), "mapped": sum(size for size, _ in mapped)})
    steps, ranks = n / 128, 8 / 2
    assert got["train"] == pytest.approx({"seconds": 7.5 + 0.5 * steps / ranks, "rss": 1.5e9 * 4 / 2,
                                          "resident": 1.5e9 * 4 / 2, "mapped": 0.0, "disk": 1e7, "steps": steps,
                                          "ranks": ranks})


def test_auto_picks_as_the_graph_stage_does():
    c = fixed_coefficients()
    assert predict(c, CLUSTER, 100_000)["graph search"]["method"] == "exact"  # within the exact range
    assert predict(c, CLUSTER, 1_000_000)["graph search"]["method"] == "ivf"
    small = Cluster("1 GiB nodes", nodes=2, cores=4, memory_gib=1)  # the 0.9 GB IVF index does not fit in half
    assert predict(c, small, 1_000_000)["graph search"]["method"] == "exact"


def test_an_unknown_search_method_is_an_error_not_ivf():
    with pytest.raises(ValueError, match="'annoy'"):
        predict(fixed_coefficients(), CLUSTER, 1_000_000, method="annoy")


def test_a_method_without_a_cost_is_an_error(monkeypatch):
    monkeypatch.delitem(cost_predict.SEARCH_SECONDS, "hnsw")
    with pytest.raises(ValueError, match="'hnsw'"):
        predict(fixed_coefficients(), CLUSTER, 1_000_000, method="hnsw")


def test_every_method_has_a_cost():
    assert set(cost_predict.SEARCH_SECONDS) == set(METHODS)


def test_gpu_training_is_bound_by_the_slower_of_model_and_loader():
    gpu = GpuTraining("run", "H100", 2000.0, "resnet50", 224, 256, 10.0, 8)
    cl = Cluster("gpus", 1, 4, 64, gpu_nodes=2, gpus_per_node=4, loader_workers_per_gpu=16)
    got = predict_cluster(fixed_coefficients(), cl, 1_000_000, gpu)["train (GPU)"]
    assert got["bound"] == "input pipeline"  # 8 x 16 x 10 = 1280 samples/s against 8 x 2000
    assert got["seconds"] == pytest.approx(1_000_000 / 1280)
    assert got["disk"] == 2000


# ------------------------------------------------------------------------------- the committed results

RESULTS = BENCHMARKS / "results"


@pytest.fixture(scope="module")
def stored() -> dict:
    return json.loads((RESULTS / "cost_model.json").read_text())


def test_coefficients_round_trip(stored):
    c = from_json(Coefficients, stored["coefficients"])
    assert json.dumps(asdict(c)) == json.dumps(stored["coefficients"])


def test_the_stored_cluster_predictions_are_reproduced(stored):
    """cost_model.json's predictions from its own coefficients, cluster and GPU figures, to the last digit; the
    shard disk at --image-bytes needs the corpus's mean image size, which the file does not store."""
    from cost_model import mean_image_bytes

    c = from_json(Coefficients, stored["coefficients"])
    scaled = with_image_bytes(c, mean_image_bytes(), stored["image_bytes_at_scale"])
    cluster, gpu = from_json(Cluster, stored["cluster"]), from_json(GpuTraining, stored["gpu_training"])
    for p in stored["predictions"]:
        assert json.dumps(predict_cluster(scaled, cluster, p["n"], gpu)) == json.dumps(p["stages"])


def test_the_stored_checks_and_this_machine_predictions_are_reproduced(stored):
    """The predictions of every check row and of "predictions_this_machine", from the stored coefficients. This
    machine's memory is not stored; any where the 12M IVF index (10.5 GB) fits in half gives its methods."""
    c = from_json(Coefficients, stored["coefficients"])
    this = Cluster(stored["machine"], 1, c.cores, 32)
    for p in stored["predictions_this_machine"]:
        assert json.dumps(predict(c, this, p["n"])) == json.dumps(p["stages"])
    for row in stored["check"]:
        n, stage = row["n"], row["stage"]
        if stage == "graph search (hnsw)":
            predicted = predict(c, this, n, method="hnsw")["graph search"]
        else:
            predicted = predict(c, this, n, train_steps=stored["check_runs"][str(n)].get("train_steps"))[stage]
        metric = {"seconds": "seconds", "memory": "rss", "disk": "disk"}[row["metric"]]
        assert predicted[metric] == row["predicted"], (n, stage, metric)
    errors, by_n = median_errors(stored["check"])
    assert errors == stored["median_abs_rel_error"]
    assert {str(n): e for n, e in by_n.items()} == stored["median_abs_rel_error_by_n"]


def test_the_stored_report_is_reproduced(stored):
    assert markdown(stored) == (RESULTS / "cost_model.md").read_text()
