"""The caption graph: each caption's top-k most similar other captions (docs/design.md, Data contracts; Targets
and loss).

Written by `xclr-prep graph` under ``SHARDS_DIR/graph/`` and kept there, so shards can be re-packed without
searching again. Layout of a graph directory ``G``::

    G/manifest.json            written last: its presence means the graph is complete
    G/neighbors.npy            (U, k) NEIGHBOR_DTYPE; row c = caption c's k nearest other captions, best first
    G/plan.json                fingerprint of the embed directory and the options that change the graph
    G/done/block-NNNNN.json    per query block marker: rows [start, end) of neighbors.npy are final
    G/index.faiss              approximate methods only: the index and its tuned search parameter

Row c of ``neighbors.npy`` holds caption ids (``id``) and cosine similarities (``sim``), sorted by similarity
descending; c itself never appears (captions are deduplicated, so "self" also covers every sample with the same
caption). A caption whose embedding is invalid (not finite, not unit norm) is never anyone's neighbour, and its own
row is all ``(-1, nan)``; the manifest lists such captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xclr_schemas.names import DONE, NEIGHBORS
from xclr_schemas.versioned import read_versioned_manifest, unreadable_as

GRAPH_SCHEMA_VERSION = "xclr.graph/1"
NEIGHBOR_DTYPE = np.dtype([("id", "<i8"), ("sim", "<f4")])


class GraphDirError(ValueError):
    """A graph directory that is incomplete, of another schema version, or inconsistent with its manifest."""


@dataclass(frozen=True)
class Graph:
    manifest: dict
    neighbors: np.ndarray  # (U, k) NEIGHBOR_DTYPE, memory-mapped read-only


def block_marker(root: Path, index: int) -> Path:
    return root / DONE / f"block-{index:05d}.json"


def load_graph(path: str | Path) -> Graph:
    """Open a complete graph directory; ``neighbors`` is memory-mapped (no memory used until rows are read)."""
    root = Path(path)
    manifest = read_versioned_manifest(root, GRAPH_SCHEMA_VERSION, GraphDirError, "graph directory",
                                       "xclr-prep graph")
    with unreadable_as(GraphDirError, root, "graph directory"):
        neighbors = np.load(root / NEIGHBORS, mmap_mode="r", allow_pickle=False)
        if neighbors.dtype != NEIGHBOR_DTYPE or neighbors.shape != (manifest["captions"], manifest["k"]):
            raise GraphDirError(f"{root}/{NEIGHBORS} is {neighbors.dtype} {neighbors.shape}, the manifest says "
                                f"({manifest['captions']}, {manifest['k']})")
    return Graph(manifest=manifest, neighbors=neighbors)
