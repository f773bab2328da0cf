"""The cost model: wall time, peak memory and disk of each stage for N captions on a stated cluster, from the
coefficients `cost_fit.calibrate` fits to runs on this machine (benchmarks/cost_model.py measures them; the figures
are in benchmarks/results/cost_model.json and docs/benchmarks.md). Pure: no file is read, nothing is run.

N input captions (= samples), U = u N unique (u measured), D = 384, k = 32. The stated cluster has K CPU nodes of
C cores; c0 = this machine's cores; s = c0 / (K C) scales a per-item cost measured here to all the cluster's cores,
s1 = c0 / C to one node (linear scaling in cores is assumed, not measured). (a, b): two-point fits y = a + b x at the
calibration sizes (cost_fit); c: a constant (the mean of the two calibration runs).

  time    embed   T = a + b N s                  (a: Ray, actor and model start; b: scan, dedup, encode, write)
          search  T = c + c' + 2 * 2000 U D / (eta G) s1 + X
                  c: process and Ray start, embedding check; c': search actor start, background similarity;
                  2000 exact recall queries on one node; G: this machine's float32 GEMM rate (numpy, the search's
                  block shape), eta: the fraction of G exact search reaches (benchmarks/results/graph.json, this
                  machine). X, by the search method (SEARCH_SECONDS; `--index auto` picks as
                  xclr_prep.search_methods.auto_method does, for the node's memory):
                  exact: X = 2 U^2 D / (eta G) s
                  ivf:   X = (t_rest + 2 D B(U) / G + 2 D Q U / (eta G) + t_tune' q(U) / q(U0)) s1
                                   + t_query (U / U0) q(U) / q(U0) s
                  U0: the size of the `--index ivf` run, which gives t_build, t_tune and t_query (its search
                  phase less the build, the tuning and the exact recall queries).
                  Build: B(U) = (640 nlist + U) nlist, the k-means (10 iterations over 64 points per list) and
                  the assignment of every vector, run as float32 GEMMs at G; t_rest = t_build - 2 D B(U0) / G
                  (training the codes, encoding: held constant). Tuning: Q = 1000 exact reference queries, and
                  t_tune' (t_tune less those at U0) of index searches. A query: q(U) = q0 + q_p nprobe
                  + q_c nprobe U / nlist + q_r refine (k + 1): the lists probed, their 4-bit codes scanned and the
                  candidates re-ranked; q0, q_p, q_c, q_r fitted (least squares) to indexes built on U0 / 4 and U0
                  captions searched at a grid of nprobe x refine. nprobe and refine are held at their values tuned
                  at U0 (assumed).
                  hnsw:  X = (t_build + t_tune) L s1 + t_query L s, L = U log2 U / (U0 log2 U0);
                  t_*: HNSW32 at U0, graph.json's corpus, on this machine
          shards  T = (a + b N) + (a' + b' N s)  (layout on the driver; locate + write, one writer per CPU)
          train   CPU: T = a + b S / R, S = N / 128 steps per epoch (or the steps given), R = K C / c0 ranks
                  each as the 2-core process measured here
                  GPU: T = N / (GPUs x min(model samples/s, W x loader samples/s per worker)), ResNet-50 at 224 px,
                  bf16, from the earlier H100 run (benchmarks/results/train_gpu_h100.json); W workers per GPU
  memory  peak of the head node (it runs the driver): M = M0 + (A - A0) M_actor + anon(N) + mapped(N)
          M0: the calibration peaks less the N terms below at their size (mean); M_actor: peak per actor; A0, A:
          actors here and per node (embed: one per 8 CPUs, search: 1, shard writers: C). N terms, from the code
          and docs/prep.md:
          embed   anon = 80 B N                     the driver's dedup
          search  anon = min(U, 32768) D 9          the driver's embedding check (a float32 block, its squares,
                                                    the finiteness mask)
                         [+ index_bytes(U)]         the method's index, in each node's search actor
                  mapped = U D 2                    fp16 embeddings, read whole by the driver's check and then by
                                                    the search actor (the driver unmaps them first: one at a time)
                         + U k 12                   neighbors.npy, read whole by the search actor for the graph's
                                                    k-th similarity (search_stage.SearchWorker.measure; the first
                                                    actor, which on a cluster may not be on the head node)
                  The driver's check block and the actor's index are never held at once (upper bound, <= 113 MB).
          shards  anon = 200 B N                    the driver's numbers per sample (xclr_prep.shard_stage; at
                                                    small sizes the driver's peak is set by allocator arenas, so a
                                                    calibration slope says nothing about it)
                  mapped = U k 12                   neighbors.npy, read by the driver and the writers
                         + b_r N                    the row and text files (b_r: their bytes per sample), read by
                                                    the writers
                  (--with-embeddings: the writers' reads of the embeddings are not counted)
          train   M = M0 C / c0                     (C / c0 ranks per node)
          RSS counts a mapped file once per process that reads it: the check compares that; on the cluster it is
          counted once per node and also reported alone ("mapped": page cache, shared and reclaimable).
  disk    embed a + b N; graph a + b U (+ index_bytes(U) for the method's index file); shards a + (o + I) N with I
          the mean image bytes (the corpus's, or --image-bytes: with_image_bytes) and o the rest of a sample;
          train: the run directory (constant); GPU training: two ResNet-50 checkpoints (latest.pt +
          epoch-0001.pt), their size measured by a 1-step CPU run of xclr-train.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace

from xclr_prep.graph_stage import VALIDITY_BLOCK
from xclr_prep.options import DEFAULT_K
from xclr_prep.search_methods import METHODS, auto_method, ivf_lists
from xclr_prep.search_stage import RECALL_QUERIES, TUNING_QUERIES

DIM, K_NEIGHBORS = 384, DEFAULT_K  # the default caption model's dimension; the graph's default k
TRAIN_BATCH = 128
# Memory that grows with N, from the code and docs/prep.md (module docstring)
DEDUP_BYTES = 80  # embed driver: caption digests and ids per input row (docs/prep.md, "Ray, resume and faults")
LAYOUT_BYTES = 200  # shard driver: the layout's numbers per sample (xclr_prep.shard_stage docstring)
CPUS_PER_EMBED_ACTOR = 8


@dataclass(frozen=True)
class Line:
    """y = a + b x."""

    a: float
    b: float

    def at(self, x: float, scale: float = 1.0) -> float:
        return self.a + self.b * x * scale


@dataclass(frozen=True)
class Memory:
    """A stage's peak: M0 (`base`), A0 (`actors`) and M_actor (`per_actor`) of the module docstring."""

    base: float
    actors: int
    per_actor: float


@dataclass(frozen=True)
class TrainMemory:
    base: float


@dataclass(frozen=True)
class HnswCosts:
    n0: int
    build_seconds: float
    tune_seconds: float
    query_seconds: float


@dataclass(frozen=True)
class QueryFit:
    """q(U) = q0 + per_list nprobe + per_code nprobe U / nlist + per_candidate refine (k + 1), seconds."""

    q0: float
    per_list: float
    per_code: float
    per_candidate: float


@dataclass(frozen=True)
class IvfCosts:
    n0: int
    nprobe: int
    nlist: int
    refine: int
    build_rest_seconds: float
    tune_search_seconds: float
    query_seconds: float
    query_fit: QueryFit


@dataclass(frozen=True)
class EmbedCosts:
    seconds: Line
    memory: Memory
    disk: Line


@dataclass(frozen=True)
class SearchCosts:
    other_seconds: Line
    seconds: Line
    gemm_flops: float
    eta: float
    hnsw: HnswCosts
    ivf: IvfCosts
    memory: Memory
    disk: Line


@dataclass(frozen=True)
class ShardCosts:
    layout_seconds: Line
    locate_write_seconds: Line
    memory: Memory
    disk: Line


@dataclass(frozen=True)
class TrainCosts:
    seconds: Line
    memory: TrainMemory
    disk: float
    resnet50_checkpoint_bytes: int


@dataclass(frozen=True)
class Coefficients:
    """Every coefficient of the model (module docstring); `row_bytes`: b_r; `cores`: c0."""

    cores: int
    unique_fraction: float
    row_bytes: float
    embed: EmbedCosts
    search: SearchCosts
    shards: ShardCosts
    train: TrainCosts


@dataclass(frozen=True)
class Cluster:
    """Where a prediction is for: K CPU nodes of C cores (prep and CPU training) and GPU nodes (GPU training)."""

    name: str
    nodes: int
    cores: int
    memory_gib: float
    gpu_nodes: int = 0
    gpus_per_node: int = 0
    loader_workers_per_gpu: int = 0


@dataclass(frozen=True)
class GpuTraining:
    """The ResNet-50 figures of a GPU run of xclr-train (benchmarks/results/train_gpu_h100.json)."""

    source: str
    device: str
    model_samples_per_s: float
    arch: str
    image_size: int
    batch_size: int
    loader_samples_per_s_per_worker: float
    loader_workers_measured: int


T = typing.TypeVar("T")


def from_json(cls: type[T], data: dict) -> T:
    """The dataclass `cls` from its `dataclasses.asdict` form (as stored in cost_model.json)."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: from_json(hints[f.name], data[f.name]) if is_dataclass(hints[f.name]) else data[f.name]
                  for f in fields(cls)})


def with_image_bytes(c: Coefficients, corpus_image_bytes: float, image_bytes: float) -> Coefficients:
    """`c` with the shards' disk per sample for images of `image_bytes` in place of the corpus's."""
    disk = c.shards.disk
    return replace(c, shards=replace(c.shards, disk=Line(disk.a, disk.b - corpus_image_bytes + image_bytes)))


# ------------------------------------------------------------------------------------------------ memory terms

@dataclass(frozen=True)
class Mapped:
    """A file memory-mapped and read whole by `readers` processes at the stage's peak (RSS counts it once per
    process)."""

    size: float
    readers: int


@dataclass(frozen=True)
class MemoryTerms:
    """The memory of a stage that grows with N (module docstring): `anon` bytes and the files mapped."""

    anon: float
    mapped: tuple[Mapped, ...] = ()

    def rss(self) -> float:
        return self.anon + sum(m.size * m.readers for m in self.mapped)

    def mapped_bytes(self) -> float:
        return sum(m.size for m in self.mapped)


def embed_terms(n: float) -> MemoryTerms:
    return MemoryTerms(DEDUP_BYTES * n)


def search_terms(u: float, method: str = "exact") -> MemoryTerms:
    index = METHODS[method].index_bytes(int(u), DIM)
    return MemoryTerms(min(u, VALIDITY_BLOCK) * DIM * 9 + index,
                       (Mapped(u * DIM * 2, 1), Mapped(u * K_NEIGHBORS * 12, 1)))


def shard_terms(n: float, u: float, row_bytes: float, writers: int) -> MemoryTerms:
    return MemoryTerms(LAYOUT_BYTES * n, (Mapped(u * K_NEIGHBORS * 12, 1 + writers), Mapped(row_bytes * n, writers)))


def node_memory(m: Memory, terms: MemoryTerms, actors: int) -> dict[str, float]:
    """Peak memory of the head node (the driver's, the busiest) with `actors` actors: `rss` as this machine's RSS
    sums count it (mapped files once per reading process), `resident` with mapped files once (page cache), and
    `mapped` alone."""
    base = m.base + (actors - m.actors) * m.per_actor
    return {"rss": base + terms.rss(), "resident": base + terms.anon + terms.mapped_bytes(),
            "mapped": terms.mapped_bytes()}


# ------------------------------------------------------------------------------------------------ search time

def exact_seconds(queries: float, u: float, flops: float) -> float:
    """Exact search of `queries` against U captions at `flops` FLOP/s: 2 D flops per pair."""
    return queries * u * 2 * DIM / flops


def ivf_build_flops(u: float) -> float:
    """2 D B(U) of the module docstring: the k-means and assignment GEMMs of building the IVF index."""
    return 2 * DIM * (640 * ivf_lists(int(u)) + u) * ivf_lists(int(u))


def ivf_query_seconds(v: IvfCosts, u: float) -> float:
    """q(U) of the module docstring: one IVF query over U vectors at the nprobe and refine tuned at U0."""
    q = v.query_fit
    return (q.q0 + q.per_list * v.nprobe + q.per_code * v.nprobe * u / ivf_lists(int(u))
            + q.per_candidate * v.refine * (K_NEIGHBORS + 1))


def _exact(g: SearchCosts, u: float, node: float, s: float) -> float:
    return exact_seconds(u, u, g.eta * g.gemm_flops) * s


def _ivf(g: SearchCosts, u: float, node: float, s: float) -> float:
    v = g.ivf
    growth = ivf_query_seconds(v, u) / ivf_query_seconds(v, v.n0)
    build = v.build_rest_seconds + ivf_build_flops(u) / g.gemm_flops
    tune = exact_seconds(TUNING_QUERIES, u, g.eta * g.gemm_flops) + v.tune_search_seconds * growth
    return (build + tune) * node + v.query_seconds * u / v.n0 * growth * s


def _hnsw(g: SearchCosts, u: float, node: float, s: float) -> float:
    h = g.hnsw
    growth = u * math.log2(u) / (h.n0 * math.log2(h.n0))
    return (h.build_seconds + h.tune_seconds) * growth * node + h.query_seconds * growth * s


SEARCH_SECONDS: dict[str, Callable[[SearchCosts, float, float, float], float]] = {
    "exact": _exact, "ivf": _ivf, "hnsw": _hnsw}  # X of the module docstring: (costs, U, s1, s) -> seconds
if set(SEARCH_SECONDS) - set(METHODS):
    raise ValueError(f"the cost model costs search methods that do not exist: {set(SEARCH_SECONDS) - set(METHODS)}")


def search_seconds(method: str) -> Callable[[SearchCosts, float, float, float], float]:
    """X of the module docstring for `method`; ValueError for a method unknown or without a cost here."""
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r}; the methods are {', '.join(METHODS)}")
    if method not in SEARCH_SECONDS:
        raise ValueError(f"the cost model has no cost for search method {method!r}")
    return SEARCH_SECONDS[method]


# ------------------------------------------------------------------------------------------------ predictions

def _embed(c: Coefficients, cl: Cluster, n: int, s: float) -> dict:
    e = c.embed
    return {"seconds": e.seconds.at(n, s), "disk": e.disk.at(n),
            **node_memory(e.memory, embed_terms(n), math.ceil(cl.cores / CPUS_PER_EMBED_ACTOR))}


def _search(c: Coefficients, cl: Cluster, n: int, u: float, s: float, node: float, method: str | None) -> dict:
    g = c.search
    method = method or auto_method("cpu", int(u), DIM, cl.memory_gib * 2**30)
    x = search_seconds(method)
    seconds = (g.other_seconds.at(n) + g.seconds.at(u)
               + exact_seconds(RECALL_QUERIES, u, g.eta * g.gemm_flops) * node)
    seconds += x(g, u, node, s)
    disk = g.disk.at(u) + METHODS[method].index_bytes(int(u), DIM)
    return {"seconds": seconds, "disk": disk, "method": method, **node_memory(g.memory, search_terms(u, method), 1)}


def _shards(c: Coefficients, cl: Cluster, n: int, u: float, s: float) -> dict:
    sh = c.shards
    return {"seconds": sh.layout_seconds.at(n) + sh.locate_write_seconds.at(n, s), "disk": sh.disk.at(n),
            **node_memory(sh.memory, shard_terms(n, u, c.row_bytes, cl.cores), cl.cores)}


def _train(c: Coefficients, cl: Cluster, n: int, train_steps: int | None) -> dict:
    t = c.train
    steps = train_steps if train_steps is not None else n / TRAIN_BATCH
    ranks = cl.nodes * cl.cores / c.cores
    per_node = t.memory.base * cl.cores / c.cores
    return {"seconds": t.seconds.at(steps / ranks), "rss": per_node, "resident": per_node, "mapped": 0.0,
            "disk": t.disk, "steps": steps, "ranks": ranks}


def predict(c: Coefficients, cl: Cluster, n: int, train_steps: int | None = None,
            method: str | None = None) -> dict[str, dict]:
    """Per stage ("embed", "graph search", "shard writing", "train"): wall `seconds`, peak memory of the head node
    (bytes; node_memory) and `disk` (bytes) for `n` captions on `cl`, as cost_model.json stores it.
    `train_steps`: CPU training steps (default: one epoch, n / TRAIN_BATCH). `method`: the search method (default:
    what `--index auto` picks); ValueError for a method unknown or without a cost."""
    s = c.cores / (cl.nodes * cl.cores)  # per-core scale
    node = c.cores / cl.cores  # work on one node
    u = n * c.unique_fraction
    return {"embed": _embed(c, cl, n, s), "graph search": _search(c, cl, n, u, s, node, method),
            "shard writing": _shards(c, cl, n, u, s), "train": _train(c, cl, n, train_steps)}


def predict_gpu_training(cl: Cluster, n: int, gpu: GpuTraining, checkpoint_bytes: int) -> dict:
    """One epoch of n samples of ResNet-50 at 224 px on the GPU nodes of `cl` (module docstring)."""
    gpus = cl.gpu_nodes * cl.gpus_per_node
    model = gpus * gpu.model_samples_per_s
    loader = gpus * cl.loader_workers_per_gpu * gpu.loader_samples_per_s_per_worker
    return {"seconds": n / min(model, loader), "bound": "input pipeline" if loader < model else "model",
            "model_samples_per_s": model, "loader_samples_per_s": loader, "disk": 2 * checkpoint_bytes,
            "resident": None}


def predict_cluster(c: Coefficients, cl: Cluster, n: int, gpu: GpuTraining) -> dict[str, dict]:
    """One epoch at `n` captions on `cl`: `predict`'s stages (auto search), "graph search (exact)" and
    "train (GPU)" (predict_gpu_training), as cost_model.json's "predictions" store them."""
    stages = predict(c, cl, n)
    stages["graph search (exact)"] = predict(c, cl, n, method="exact")["graph search"]
    stages["train (GPU)"] = predict_gpu_training(cl, n, gpu, c.train.resnet50_checkpoint_bytes)
    return stages
