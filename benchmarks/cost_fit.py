"""Fitting the cost model (cost_predict) to measured runs: the records benchmarks/cost_model.py caches, in, the
coefficients out. Pure: no file is read, nothing is run.

Rules: (a, b) is the line through the two calibration runs, y = a + b x; a slope b < 0 (noise) becomes b = 0 with
a = the mean (`fit`). A constant is the mean of the runs (`constant`), used where the code does no per-item work
worth measuring at the calibration sizes. A stage's memory M0 is the mean over the runs of the peak less the terms
that grow with N at the run's size (cost_predict.*_terms), so that only what the model does not explain is fitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cost_predict import (
    Coefficients,
    EmbedCosts,
    GpuTraining,
    HnswCosts,
    IvfCosts,
    Line,
    Memory,
    MemoryTerms,
    QueryFit,
    SearchCosts,
    ShardCosts,
    TrainCosts,
    TrainMemory,
    embed_terms,
    exact_seconds,
    ivf_build_flops,
    search_terms,
    shard_terms,
)

from xclr_prep.search_stage import RECALL_QUERIES, TUNING_QUERIES


@dataclass(frozen=True)
class CalibrationRuns:
    """What `calibrate` fits, as cost_model.py records it. `embeds`, `graphs`: `xclr-prep embed` and `xclr-prep
    graph` at the two calibration sizes ("n", "wall_seconds", "peaks" by phase, the stage's seconds and disk bytes);
    `trains`: CPU training runs of two step counts ("steps"); `checkpoint`: a 1-step ResNet-50 run
    ("checkpoint_bytes"); `gemm`: {"flops"}; `ivf`: an `--index ivf` graph run at U0 (its "index": tuned "value",
    "nlist", "refine", "build_seconds", "tune_seconds"); `ivf_queries`: {"fit": q0, per_list, per_code,
    per_candidate}; `graph_bench`: benchmarks/results/graph.json (exact "fraction_of_gemm", "hnsw")."""

    embeds: list[dict]
    graphs: list[dict]
    trains: list[dict]
    checkpoint: dict
    gemm: dict
    ivf: dict
    ivf_queries: dict
    graph_bench: dict


def fit(xs: list[float], ys: list[float]) -> Line:
    """y = a + b x through two points; b < 0 (noise) becomes b = 0, a = mean(y)."""
    (x1, x2), (y1, y2) = xs, ys
    b = (y2 - y1) / (x2 - x1)
    if b < 0:
        return Line((y1 + y2) / 2, 0.0)
    return Line(y1 - b * x1, b)


def constant(ys: list[float]) -> Line:
    return Line(float(np.mean(ys)), 0.0)


def peak(run: dict, phase: str, name: str = "total") -> float:
    return run["peaks"][phase][name]


def stage_memory(runs: list[dict], phase: str, terms: Callable[[dict, int], MemoryTerms]) -> Memory:
    """M0, A0 and M_actor of `runs` in `phase`; `terms(run, actors)`: the N terms at the run's size."""
    actors = [peak(r, phase, "n_actors") for r in runs]
    base = [peak(r, phase) - terms(r, a).rss() for r, a in zip(runs, actors)]
    return Memory(float(np.mean(base)), max(actors),
                  float(np.mean([peak(r, phase, "actors") / max(1, a) for r, a in zip(runs, actors)])))


def search_costs(runs: CalibrationRuns) -> SearchCosts:
    """The search's coefficients: the exact runs less their exact search, HNSW from graph.json, IVF from the
    `--index ivf` run less what the model computes (cost_predict docstring)."""
    graphs, gemm, hnsw = runs.graphs, runs.gemm["flops"], runs.graph_bench["hnsw"]
    eta = runs.graph_bench["exact"]["fraction_of_gemm"]
    flops = eta * gemm
    us = [r["captions"] for r in graphs]
    rest = constant([r["search_seconds"] - exact_seconds(u + RECALL_QUERIES, u, flops) for r, u in zip(graphs, us)])
    v, u0 = runs.ivf["index"], runs.ivf["captions"]
    ivf = IvfCosts(
        n0=u0, nprobe=v["value"], nlist=v["nlist"], refine=v["refine"],
        build_rest_seconds=v["build_seconds"] - ivf_build_flops(u0) / gemm,
        tune_search_seconds=v["tune_seconds"] - exact_seconds(TUNING_QUERIES, u0, flops),
        query_seconds=runs.ivf["search_seconds"] - rest.a - exact_seconds(RECALL_QUERIES, u0, flops)
        - v["build_seconds"] - v["tune_seconds"],
        query_fit=QueryFit(**runs.ivf_queries["fit"]))
    return SearchCosts(
        other_seconds=constant([r["wall_seconds"] - r["search_seconds"] - r["shards_seconds"] for r in graphs]),
        seconds=rest, gemm_flops=gemm, eta=eta,
        hnsw=HnswCosts(hnsw["n"], hnsw["build_seconds"], hnsw["tune_seconds"],
                       hnsw["seconds"] - hnsw["build_seconds"] - hnsw["tune_seconds"]),
        ivf=ivf, memory=stage_memory(graphs, "before", lambda r, a: search_terms(r["captions"])),
        disk=fit(us, [r["graph_disk_bytes"] for r in graphs]))


def calibrate(runs: CalibrationRuns) -> Coefficients:
    """Every coefficient of the model (cost_predict docstring) from the calibration runs."""
    embeds, graphs, trains = runs.embeds, runs.graphs, runs.trains
    ns = [r["n"] for r in embeds]
    row_bytes = fit(ns, [r["layout_disk_bytes"] for r in graphs]).b  # the writers' mapped rows per sample
    return Coefficients(
        cores=embeds[0]["cores"],
        unique_fraction=embeds[-1]["unique_captions"] / embeds[-1]["n"],
        row_bytes=row_bytes,
        embed=EmbedCosts(fit(ns, [r["wall_seconds"] for r in embeds]),
                         stage_memory(embeds, "all", lambda r, a: embed_terms(r["n"])),
                         fit(ns, [r["disk_bytes"] for r in embeds])),
        search=search_costs(runs),
        shards=ShardCosts(
            fit(ns, [r["layout_seconds"] for r in graphs]), fit(ns, [r["locate_write_seconds"] for r in graphs]),
            stage_memory(graphs, "after", lambda r, a: shard_terms(r["n"], r["captions"], row_bytes, a)),
            fit(ns, [r["shards_disk_bytes"] for r in graphs])),
        train=TrainCosts(fit([r["steps"] for r in trains], [r["wall_seconds"] for r in trains]),
                         TrainMemory(float(np.mean([peak(r, "all") for r in trains]))),
                         float(np.mean([r["disk_bytes"] for r in trains])),
                         runs.checkpoint["checkpoint_bytes"]))


def gpu_training(h100: dict, source: str) -> GpuTraining:
    """The ResNet-50 figures of the H100 run `h100` (benchmarks/bench_train.py's results, from `source`): the
    model's step rate and the input pipeline's rate per worker at the most workers measured."""
    best = max(h100["pipeline"]["runs"], key=lambda r: r["workers"])
    return GpuTraining(source, h100["device"],
                       h100["step"]["samples_per_s"], h100["step"]["arch"], h100["step"]["image_size"],
                       h100["step"]["batch_size"], best["samples_per_s_per_worker"], best["workers"])
