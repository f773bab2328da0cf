"""Shards: locate every sample's image, lay samples out in neighbour groups, write the tars over a Ray pool.

Under ``OUT/layout/`` (resume state, kept so a rerun never re-plans):

    locate/uNNNNN.parquet + .json   one locate unit per image source (tar, table) or per 50k image files
    stage/uNNNNN.tar|.blob          decompressed tars and copied image columns (random access for the writers)
    layout.parquet                  the final order: sample, byte range, group, shard (written once, atomically)

Then ``OUT/shard-NNNNNN.tar`` and ``OUT/done/shard-NNNNNN.json`` per shard (`xclr_prep.shard_writer`). Shards are
cut at group boundaries when the next group would pass `shard_samples` samples or `shard_bytes` bytes (estimated
from the image sizes and the tar layout; a single group larger than either is a shard of its own).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xclr_prep.groups import in_group_neighbors, neighbour_groups
from xclr_prep.images import LOCATION_SCHEMA, locate
from xclr_prep.raypool import run_stage
from xclr_prep.shard_writer import done_marker, tar_bytes, write_shard
from xclr_schemas import NEIGHBOR_DTYPE, EmbeddingRows, shard_name
from xclr_schemas.atomic import write_atomic, write_json_atomic
from xclr_schemas.names import LAYOUT, NEIGHBORS

FILES_PER_UNIT = 50_000
_META_BYTES = 64  # a KEY.json member, about
_NPY_HEADER = 128


@dataclass(frozen=True)
class ShardOptions:
    group_size: int = 8
    shard_samples: int = 10_000
    shard_bytes: int = 1_000_000_000
    with_embeddings: bool = False
    seed: int = 0


@dataclass(frozen=True)
class LocateUnit:
    """Locate the images of sample rows `samples`: one tar or table `source` (`refs` = its members, or (path,
    row) pairs), or (kind "file", source "") a list of image files (`refs` = their paths)."""
    index: int
    kind: str
    source: str
    refs: list
    samples: np.ndarray
    weight = 1  # a source


@dataclass(frozen=True)
class ShardUnit:
    """Write shard `index`, `samples` samples of the layout."""
    index: int
    samples: int

    @property
    def weight(self) -> int:
        return self.samples


class ShardWorker:
    """Ray actor: locates images of one source and writes shards."""

    def __init__(self, embed_dir: str, graph_dir: str, out: str, with_embeddings: bool, threads: int) -> None:
        self.out = Path(out)
        self.neighbors = np.load(Path(graph_dir) / NEIGHBORS, mmap_mode="r", allow_pickle=False)
        self.rows = EmbeddingRows(embed_dir) if with_embeddings else None
        self.threads = threads

    def locate(self, u: LocateUnit) -> dict:
        stage = self.out / LAYOUT / "stage" / f"u{u.index:05d}.{'tar' if u.kind == 'tar' else 'blob'}"
        table, missing = locate(u.kind, u.source, u.refs, u.samples, stage)
        write_atomic(_locate_path(self.out, u.index), lambda p: pq.write_table(table, p))
        marker = {"unit": u.index, "located": table.num_rows, "missing": missing}
        write_json_atomic(_locate_path(self.out, u.index).with_suffix(".json"), marker)
        return marker

    def write(self, index: int, samples: pa.Table) -> dict:
        ids = samples.column("caption_id").to_numpy()
        neighbors = np.asarray(self.neighbors[ids], dtype=NEIGHBOR_DTYPE)
        embeddings = self.rows.take(ids).astype(np.float16) if self.rows is not None else None
        return write_shard(self.out, index, samples, neighbors, embeddings, self.threads)


def _locate_path(out: Path, unit: int) -> Path:
    return out / LAYOUT / "locate" / f"u{unit:05d}.parquet"


def locate_units(samples: pa.Table, eligible: np.ndarray) -> tuple[list[LocateUnit], int]:
    """(units, samples without any image reference) for the `eligible` sample rows: one unit per tar or table
    source, image files in units of FILES_PER_UNIT."""
    encoded = samples.column("image_source").combine_chunks().dictionary_encode()
    sources, codes = encoded.dictionary.to_pylist(), encoded.indices.to_numpy()
    members = samples.column("image_member").to_numpy(zero_copy_only=False)
    rows = samples.column("image_row").to_numpy()
    kind = np.where(rows >= 0, "column", np.where(members != "", "tar", "file"))
    if "" in sources:
        kind[codes == sources.index("")] = "none"
    units: list[LocateUnit] = []
    per_source = eligible[np.isin(kind[eligible], ("tar", "column"))]
    per_source = per_source[np.lexsort((kind[per_source], codes[per_source]))]
    cuts = np.flatnonzero((np.diff(codes[per_source]) != 0) | (kind[per_source][1:] != kind[per_source][:-1])) + 1
    for picked in np.split(per_source, cuts) if len(per_source) else []:
        source = sources[codes[picked[0]]]
        refs = (members[picked].tolist() if kind[picked[0]] == "tar"
                else list(zip(members[picked].tolist(), rows[picked].tolist())))
        units.append(LocateUnit(len(units), str(kind[picked[0]]), source, refs, picked))
    files = eligible[kind[eligible] == "file"]
    for lo in range(0, len(files), FILES_PER_UNIT):
        picked = files[lo:lo + FILES_PER_UNIT]
        units.append(LocateUnit(len(units), "file", "", [sources[c] for c in codes[picked]], picked))
    return units, int((kind[eligible] == "none").sum())


def plan_layout(located: pa.Table, caption_of: np.ndarray, text_bytes: np.ndarray, neighbor_ids: np.ndarray,
                k: int, dim: int, opts: ShardOptions) -> pa.Table:
    """The shard layout of the located samples: LOCATION_SCHEMA columns plus group and shard, in shard order.

    Groups come from `neighbour_groups`, are shuffled (seeded) and numbered in their new order.
    """
    sample = located.column("sample").to_numpy()
    order, sizes = neighbour_groups(caption_of[sample], neighbor_ids, opts.group_size, opts.seed)
    rng = np.random.default_rng(opts.seed + 1)
    group_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    shuffled = rng.permutation(len(sizes))
    positions = np.concatenate([order[group_starts[g]:group_starts[g] + sizes[g]] for g in shuffled]) \
        if len(sizes) else np.empty(0, dtype=np.int64)
    group = np.repeat(np.arange(len(sizes)), sizes[shuffled])
    table = located.take(positions)
    per_sample = (tar_bytes(table.column("size").to_numpy()) + tar_bytes(text_bytes[sample[positions]])
                  + tar_bytes(np.int64(_META_BYTES)) + tar_bytes(np.int64(_NPY_HEADER + k * NEIGHBOR_DTYPE.itemsize))
                  + (tar_bytes(np.int64(_NPY_HEADER + 2 * dim)) if opts.with_embeddings else 0))
    group_bytes = np.add.reduceat(per_sample, np.concatenate([[0], np.cumsum(sizes[shuffled])[:-1]])) \
        if len(sizes) else np.empty(0, dtype=np.int64)
    shard_of_group = np.empty(len(sizes), dtype=np.int64)
    shard, count, nbytes = 0, 0, 0
    for g, (size, b) in enumerate(zip(sizes[shuffled].tolist(), group_bytes.tolist())):
        if count and (count + size > opts.shard_samples or nbytes + b > opts.shard_bytes):
            shard, count, nbytes = shard + 1, 0, 0
        shard_of_group[g] = shard
        count, nbytes = count + size, nbytes + b
    return table.append_column("group", pa.array(group)).append_column("shard", pa.array(shard_of_group[group]))


def run_shards(actors: list, out: Path, samples: pa.Table, captions: pa.ChunkedArray, neighbor_ids: np.ndarray,
               eligible: np.ndarray, k: int, dim: int, opts: ShardOptions, progress: bool) -> dict:
    """Locate, lay out and write the shards of the `eligible` sample rows; returns counts, groups and shards."""
    started = time.perf_counter()
    units, no_image = locate_units(samples, eligible)
    markers = {u.index: json.loads(_locate_path(out, u.index).with_suffix(".json").read_text()) for u in units
               if _locate_path(out, u.index).with_suffix(".json").exists()}
    run_stage(actors, "locate", units, markers, "locate", "source", progress)

    located_at = time.perf_counter()
    caption_of = samples.column("caption_id").to_numpy()
    layout_path = out / LAYOUT / "layout.parquet"
    if not layout_path.exists():
        located = pa.concat_tables([pq.read_table(_locate_path(out, u.index)) for u in units]) if units \
            else LOCATION_SCHEMA.empty_table()
        text_bytes = pc.binary_length(pc.cast(captions.take(pa.array(caption_of)), pa.binary())).to_numpy()
        layout = plan_layout(located, caption_of, text_bytes, neighbor_ids, k, dim, opts)
        write_atomic(layout_path, lambda p: pq.write_table(layout, p))
    layout = pq.read_table(layout_path)
    shard_of = layout.column("shard").to_numpy()
    n_shards = int(shard_of.max()) + 1 if len(shard_of) else 0
    bounds = np.searchsorted(shard_of, np.arange(n_shards + 1))

    def shard_input(i: int) -> pa.Table:
        part = layout.slice(bounds[i], bounds[i + 1] - bounds[i])
        rows = pa.array(part.column("sample").to_numpy())
        ids = samples.column("caption_id").take(rows)
        return pa.table({"sample": part.column("sample"), "key": samples.column("key").take(rows),
                         "text": captions.take(ids), "caption_id": ids, "group": part.column("group"),
                         "label": samples.column("label").take(rows), "blob": part.column("blob"),
                         "offset": part.column("offset"), "size": part.column("size")})

    laid_out_at = time.perf_counter()
    written = {i: json.loads(done_marker(out, i).read_text()) for i in range(n_shards) if done_marker(out, i).exists()}
    run_stage(actors, "write", [ShardUnit(i, int(bounds[i + 1] - bounds[i])) for i in range(n_shards)], written,
              "shards", "sample", progress, prepare=lambda unit: (unit.index, shard_input(unit.index)))

    wrote_at = time.perf_counter()
    skipped = Counter({"no_image": no_image, "image_missing": sum(m["missing"] for m in markers.values())})
    for m in written.values():
        skipped.update(m["skipped"])
    undecodable = np.concatenate([np.asarray(m["skipped_samples"], dtype=np.int64) for m in written.values()] +
                                 [np.empty(0, dtype=np.int64)])
    final = layout.filter(pa.array(~np.isin(layout.column("sample").to_numpy(), undecodable)))
    per_sample = in_group_neighbors(caption_of[final.column("sample").to_numpy()], final.column("group").to_numpy(),
                                    neighbor_ids)
    groups = np.unique(final.column("group").to_numpy(), return_counts=True)[1]
    return {
        "skipped": {r: n for r, n in sorted(skipped.items()) if n},
        "written": int(final.num_rows),
        "groups": {"count": len(groups), "size_mean": float(groups.mean()) if len(groups) else 0.0,
                   "singletons": int((groups == 1).sum()),
                   "in_group_neighbors_mean": float(per_sample.mean()) if len(per_sample) else 0.0},
        "shards": [{"name": shard_name(i), "samples": written[i]["samples"], "bytes": written[i]["bytes"]}
                   for i in range(n_shards) if written[i]["samples"]],
        "undecodable": undecodable.tolist(),
        "timing": {"locate_seconds": round(located_at - started, 2),
                   "layout_seconds": round(laid_out_at - located_at, 2),
                   "write_seconds": round(wrote_at - laid_out_at, 2)},
    }
