"""The search methods of `xclr-prep graph --index`: one record each, read by the search core (`xclr_prep.knn`), the
command line, the `auto` policy and the cost model (benchmarks/cost_model.py).

A method says how it is run, not how fast it is (measured: docs/benchmarks.md, "Graph search"):

| method | FAISS recipe (`recipe`) | engine on a GPU worker, faiss-gpu wheel / faiss-cpu wheel | tuned | auto |
|---|---|---|---|---|
| exact | none | faiss-gpu (`knn_gpu`) / torch-cuda (fp16 matmul + top-k) | - | yes |
| ivf | ``IVF{nlist},PQ{D/2}x4fs,Refine(SQfp16)`` (faiss-gpu: below) | faiss-gpu / faiss-cpu | nprobe, refine | yes |
| hnsw | ``HNSW32`` | faiss-cpu / faiss-cpu (FAISS has no GPU HNSW) | efSearch | no |

A CPU worker runs every method on faiss-cpu. ivf on CPU scans the probed lists as 4-bit PQ codes (FAISS's SIMD
fast-scan) and re-ranks the best `refine` * (k + 1) candidates with fp16 vectors (the embeddings are stored in fp16,
so the re-ranking is exact); FAISS's GPU indexes have neither, so on faiss-gpu the lists hold fp16 codes
(``IVF{nlist},SQfp16``).

`auto_method`: exact on GPUs, and on CPUs up to EXACT_MAX_CPU captions; above, the first approximate method that
`auto` may pick whose index fits in half the smallest node's memory, else exact (which needs only block-sized memory,
just more time). HNSW is never picked (why: docs/design.md, Choices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EXACT_MAX_CPU = 250_000
HNSW_M = 32


def ivf_lists(n: int) -> int:
    """nlist of the IVF index: the power of two nearest 4 * sqrt(n), within [16, 65536] (autofaiss's range)."""
    return int(min(65_536, max(16, 2 ** round(math.log2(4 * math.sqrt(n))))))


@dataclass(frozen=True)
class SearchMethod:
    """How one method searches (module docstring). `parameter`: the FAISS search parameter tuned to the recall
    target (None: exact, nothing to tune); `refine_factors`: candidates re-ranked per result, tried in this order by
    the tuning, on CPU; `gpu_engines`: the engine of a GPU worker with the faiss-gpu wheel and with faiss-cpu."""

    name: str
    help: str
    auto: bool
    parameter: str | None
    gpu_engines: tuple[str, str]
    refine_factors: tuple[int, ...] = ()

    def engine(self, device: str, faiss_gpu: bool) -> str:
        """The engine that runs this method on a worker of `device` ("cpu" or "cuda") with the faiss-gpu wheel
        or not."""
        if device != "cuda":
            return "faiss-cpu"
        return self.gpu_engines[0] if faiss_gpu else self.gpu_engines[1]

    def recipe(self, n: int, dim: int, engine: str) -> str:
        """The FAISS factory string of the index over `n` vectors on `engine`; "" where none is built. A graph's
        plan records it, so that a graph is never resumed with another index."""
        return ""

    def index_bytes(self, n: int, dim: int) -> int:
        """Memory of the index built on CPU over `n` vectors of `dim` dimensions."""
        return 0

    def grid(self, nlist: int, k: int) -> list[int]:
        """The values of `parameter` the tuning tries, cheapest first."""
        return []


class Exact(SearchMethod):
    pass


class Ivf(SearchMethod):
    def recipe(self, n: int, dim: int, engine: str) -> str:
        if engine == "faiss-gpu":
            return f"IVF{ivf_lists(n)},SQfp16"
        return f"IVF{ivf_lists(n)},PQ{dim // 2 if dim % 2 == 0 else dim}x4fs,Refine(SQfp16)"

    def index_bytes(self, n: int, dim: int) -> int:
        """dim / 4 (4-bit codes of 2 dimensions) + 2 * dim (fp16 vectors for re-ranking) + 8 (id) bytes per
        vector, and the float32 centroids."""
        return n * (dim // 4 + 2 * dim + 8) + ivf_lists(n) * dim * 4

    def grid(self, nlist: int, k: int) -> list[int]:
        """nprobe: every power of two up to nlist."""
        return [2**i for i in range(int(math.log2(nlist)) + 1)]


class Hnsw(SearchMethod):
    def recipe(self, n: int, dim: int, engine: str) -> str:
        return f"HNSW{HNSW_M}"

    def index_bytes(self, n: int, dim: int) -> int:
        """float32 vectors, 2 * M links of 4 bytes and an 8-byte id per vector."""
        return n * (4 * dim + 2 * HNSW_M * 4 + 8)

    def grid(self, nlist: int, k: int) -> list[int]:
        """efSearch: powers of two from max(16, k + 1) to 4096."""
        return [2**i for i in range(max(4, math.ceil(math.log2(k + 1))), 13)]


METHODS: dict[str, SearchMethod] = {m.name: m for m in (
    Exact("exact", "every pair, in blocks (memory: a block)", auto=True, parameter=None,
          gpu_engines=("faiss-gpu", "torch-cuda")),
    Ivf("ivf", "an inverted-file index, tuned to the recall target", auto=True, parameter="nprobe",
        gpu_engines=("faiss-gpu", "faiss-cpu"), refine_factors=(4, 16, 64)),
    Hnsw("hnsw", "an HNSW graph index, tuned to the recall target", auto=False, parameter="efSearch",
         gpu_engines=("faiss-cpu", "faiss-cpu")),
)}
CHOICES = ("auto", *METHODS)
AUTO_HELP = (f"auto: exact on GPUs and on CPUs up to {EXACT_MAX_CPU:,} captions; above, "
             + " or ".join(m.name for m in METHODS.values() if m.auto and m.parameter)
             + " if its index fits in half the smallest Ray node's memory, else exact")


def method(name: str) -> SearchMethod:
    """The method called `name`; ValueError for any other name."""
    if name not in METHODS:
        raise ValueError(f"unknown search method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def auto_method(device: str, n: int, dim: int, node_memory: float) -> str:
    """What ``--index auto`` picks for `n` valid captions of `dim` dimensions on workers of `device`, the smallest
    node having `node_memory` bytes (module docstring)."""
    if device == "cuda" or n <= EXACT_MAX_CPU:
        return "exact"
    fits = [m.name for m in METHODS.values()
            if m.auto and m.parameter and m.index_bytes(n, dim) <= node_memory / 2]
    return fits[0] if fits else "exact"
