"""Shards: locate every sample's image, lay samples out in neighbour groups, write the tars over a Ray pool.

The driver holds a few numbers per sample (caption id, image size, the layout's sample, group and shard), never a
string: keys, captions and image locations stay on disk, and each writer reads those of its own shard from
memory-mapped files. Under ``OUT/layout/`` (resume state, kept so a rerun never re-plans):

    rows/pNNNNN.arrow + .json   per embed part: key, caption_id, label and image location (LOCATION_SCHEMA) of each
                                sample, in part order, as uncompressed Arrow IPC (memory-mapped by the writers)
    text/pNNNNN.arrow           per embed part: the texts of the captions first seen in it
    stage/                      decompressed tars and copied image columns (random access for the writers)
    layout.parquet              the final order: sample, group, shard (written once, atomically)

Then ``OUT/shard-NNNNNN.tar`` and ``OUT/done/shard-NNNNNN.json`` per shard (`xclr_prep.shard_writer`). Shards are
cut at group boundaries when the next group would pass `shard_samples` samples or `shard_bytes` bytes (estimated
from the image sizes and the tar layout; a single group larger than either is a shard of its own).

Driver memory: about 200 bytes per sample (its anonymous peak grew 268 bytes per sample from 30k to 100k samples,
185 to 1M and 76 from 1M to 3M), plus the memory-mapped neighbour rows it reads.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xclr_prep.groups import in_group_neighbors, neighbour_groups
from xclr_prep.images import IMAGE_MISSING, NO_IMAGE, locate_rows
from xclr_prep.options import ShardOptions
from xclr_prep.raypool import run_stage
from xclr_prep.shard_writer import done_marker, tar_bytes, write_shard
from xclr_schemas import NEIGHBOR_DTYPE, SAMPLES_SCHEMA, EmbeddingRows, part_paths, shard_name
from xclr_schemas.atomic import write_atomic, write_json_atomic
from xclr_schemas.names import LAYOUT, NEIGHBORS

_META_BYTES = 64  # a KEY.json member, about
_NPY_HEADER = 128
ROW_COLUMNS = ("key", "caption_id", "label", "blob", "offset", "size")


@dataclass(frozen=True)
class EmbedParts:
    """Where each embed part's samples and captions start: sample s is row s - samples[p] of part p."""
    samples: np.ndarray  # (P + 1,) int64: first sample of each part, then the total
    captions: np.ndarray  # (P + 1,) int64: first caption id of each part, then U

    @classmethod
    def of(cls, manifest: dict) -> EmbedParts:
        parts = manifest["parts"]
        return cls(np.cumsum([0] + [p["samples"] for p in parts]),
                   np.array([p["caption_start"] for p in parts] + [manifest["counts"]["unique_captions"]]))

    def __len__(self) -> int:
        return len(self.samples) - 1


@dataclass(frozen=True)
class Unit:
    """One unit of the locate stage (embed part `index`) or of the write stage (shard `index`), of `samples`
    samples."""
    index: int
    samples: int

    @property
    def weight(self) -> int:
        return self.samples


@dataclass(frozen=True)
class Layout:
    """The shard order: ``sample[i]`` is the i-th sample written, in group ``group[i]`` of shard ``shard[i]``;
    groups are numbered in order and never span shards."""
    sample: np.ndarray
    group: np.ndarray
    shard: np.ndarray

    def shard_bounds(self) -> np.ndarray:
        """(S + 1,): shard i is positions [bounds[i], bounds[i + 1])."""
        n_shards = int(self.shard[-1]) + 1 if len(self.shard) else 0
        return np.searchsorted(self.shard, np.arange(n_shards + 1))

    def save(self, path: Path) -> None:
        table = pa.table({"sample": self.sample, "group": self.group, "shard": self.shard})
        write_atomic(path, lambda p: pq.write_table(table, p))

    @classmethod
    def load(cls, path: Path) -> Layout:
        table = pq.read_table(path)
        return cls(*(table.column(c).to_numpy() for c in ("sample", "group", "shard")))


def _rows_path(out: Path, part: int) -> Path:
    return out / LAYOUT / "rows" / f"p{part:05d}.arrow"


def _text_path(out: Path, part: int) -> Path:
    return out / LAYOUT / "text" / f"p{part:05d}.arrow"


def _write_ipc(path: Path, table: pa.Table) -> None:
    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())

    write_atomic(path, write)


def _read_ipc(path: Path) -> pa.Table:
    """The table of an Arrow IPC file, memory-mapped (its pages are the page cache's, not this process's)."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


class ShardWorker:
    """Ray actor: locates the images of embed parts and writes shards."""

    def __init__(self, embed_dir: str, graph_dir: str, out: str, parts: EmbedParts, with_embeddings: bool,
                 threads: int) -> None:
        self.embed_dir, self.out, self.parts = Path(embed_dir), Path(out), parts
        self.neighbors = np.load(Path(graph_dir) / NEIGHBORS, mmap_mode="r", allow_pickle=False)
        self.rows = EmbeddingRows(embed_dir) if with_embeddings else None
        self.threads = threads

    def locate(self, u: Unit) -> dict:
        """Locate the images of embed part `u.index` and copy its rows and texts to Arrow IPC; then the marker."""
        paths = part_paths(self.embed_dir, u.index)
        samples = pq.read_table(paths["samples"], schema=SAMPLES_SCHEMA)
        located = locate_rows(samples, self.out / LAYOUT / "stage", u.index)
        rows = pa.table({c: samples.column(c) for c in ("key", "caption_id", "label")}
                        | {c: located.column(c) for c in located.column_names})
        _write_ipc(_text_path(self.out, u.index), pq.read_table(paths["captions"], columns=["text"]))
        _write_ipc(_rows_path(self.out, u.index), rows)
        size = located.column("size").to_numpy()
        marker = {"part": u.index, "samples": samples.num_rows, "located": int((size >= 0).sum()),
                  "no_image": int((size == NO_IMAGE).sum()), "image_missing": int((size == IMAGE_MISSING).sum())}
        write_json_atomic(_rows_path(self.out, u.index).with_suffix(".json"), marker)
        return marker

    @cached_property
    def _tables(self) -> tuple[list[pa.Table], list[pa.Table]]:
        """Every part's rows and texts, memory-mapped (opened at the first shard, once every part is located)."""
        return ([_read_ipc(_rows_path(self.out, p)) for p in range(len(self.parts))],
                [_read_ipc(_text_path(self.out, p)) for p in range(len(self.parts))])

    def write(self, index: int, sample: np.ndarray, group: np.ndarray) -> dict:
        """Write shard `index` of samples `sample` (in order), of groups `group`. The marker adds the number of
        in-group graph neighbours summed over the samples written."""
        rows, texts = self._tables
        table = _take_by_part(rows, self.parts.samples, sample)
        ids = table.column("caption_id").to_numpy()
        text = _take_by_part(texts, self.parts.captions, ids).column("text")
        samples = table.append_column("sample", pa.array(sample)).append_column("text", text) \
                       .append_column("group", pa.array(group))
        neighbor_ids = np.asarray(self.neighbors[ids], dtype=NEIGHBOR_DTYPE)
        embeddings = self.rows.take(ids).astype(np.float16) if self.rows is not None else None
        marker = write_shard(self.out, index, samples, neighbor_ids, embeddings, self.threads)
        kept = ~np.isin(sample, marker["skipped_samples"])
        marker["in_group_neighbors"] = int(in_group_neighbors(ids[kept], group[kept], self.neighbors["id"]).sum())
        write_json_atomic(done_marker(self.out, index), marker)
        return marker


def _take_by_part(tables: list[pa.Table], starts: np.ndarray, index: np.ndarray) -> pa.Table:
    """Rows `index` (global, any order) of the concatenation of `tables` (table p holds [starts[p], starts[p+1])),
    in the order of `index`."""
    part = np.searchsorted(starts, index, "right") - 1
    order = np.argsort(part, kind="stable")
    pieces = [tables[p].take(pa.array(index[order[lo:hi]] - starts[p]))
              for p, lo, hi in _runs(part[order])]
    joined = pa.concat_tables(pieces) if pieces else tables[0].schema.empty_table()
    return joined.take(pa.array(np.argsort(order, kind="stable")))


def _runs(values: np.ndarray) -> list[tuple[int, int, int]]:
    """(value, start, end) of each run of equal values."""
    cuts = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], cuts]).astype(np.int64)
    ends = np.concatenate([cuts, [len(values)]]).astype(np.int64)
    return [(int(values[s]), int(s), int(e)) for s, e in zip(starts, ends)] if len(values) else []


def plan_layout(sample: np.ndarray, caption_of: np.ndarray, sample_bytes: np.ndarray, neighbor_ids: np.ndarray,
                opts: ShardOptions) -> Layout:
    """The shard layout of samples `sample` (``caption_of[s]``, ``sample_bytes[s]`` their caption and tar bytes).

    Groups come from `neighbour_groups`, are shuffled (seeded) and numbered in their new order.
    """
    order, sizes = neighbour_groups(caption_of[sample], neighbor_ids, opts.group_size, opts.seed)
    shuffled = np.random.default_rng(opts.seed + 1).permutation(len(sizes))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    # positions of group shuffled[0], then shuffled[1], ...: each group's start, repeated, plus a ramp within it
    new_sizes = sizes[shuffled]
    ramp = np.arange(len(sample)) - np.repeat(np.cumsum(new_sizes) - new_sizes, new_sizes)
    positions = order[np.repeat(starts[shuffled], new_sizes) + ramp]
    del order, ramp
    laid_out = sample[positions]
    group = np.repeat(np.arange(len(sizes)), new_sizes)
    group_bytes = np.bincount(group, weights=sample_bytes[laid_out], minlength=len(sizes)).astype(np.int64)
    shard_of_group = np.empty(len(sizes), dtype=np.int64)
    shard, count, nbytes = 0, 0, 0
    for g, (size, b) in enumerate(zip(new_sizes.tolist(), group_bytes.tolist())):
        if count and (count + size > opts.shard_samples or nbytes + b > opts.shard_bytes):
            shard, count, nbytes = shard + 1, 0, 0
        shard_of_group[g] = shard
        count, nbytes = count + size, nbytes + b
    return Layout(laid_out, group, shard_of_group[group])


def _column(paths: list[Path], column: str, read) -> np.ndarray:
    arrays = [read(p).column(column).to_numpy() for p in paths]
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)


def _sample_bytes(out: Path, n_parts: int, caption_of: np.ndarray, size: np.ndarray, k: int, dim: int,
                  with_embeddings: bool) -> np.ndarray:
    """Each sample's bytes in a tar: its image, caption, KEY.json, neighbour row (and embedding), each member
    rounded up to tar blocks with its header."""
    text_bytes = np.concatenate([pc.binary_length(pc.cast(_read_ipc(_text_path(out, p)).column("text"),
                                                          pa.binary())).to_numpy() for p in range(n_parts)]
                                + [np.empty(0, dtype=np.int32)])
    fixed = int(tar_bytes(np.int64(_META_BYTES)) + tar_bytes(np.int64(_NPY_HEADER + k * NEIGHBOR_DTYPE.itemsize))
                + (tar_bytes(np.int64(_NPY_HEADER + 2 * dim)) if with_embeddings else 0))
    return tar_bytes(np.maximum(size, 0)) + tar_bytes(text_bytes[caption_of].astype(np.int64)) + fixed


def run_shards(actors: list, out: Path, embed_dir: Path, parts: EmbedParts, caption_ok: np.ndarray,
               neighbor_ids: np.ndarray, k: int, dim: int, opts: ShardOptions, progress: bool) -> dict:
    """Locate, lay out and write the shards of every sample whose caption is `caption_ok` (bool per caption id);
    returns counts (skips by reason), groups, shards and the keys of undecodable images."""
    started = time.perf_counter()
    units = [Unit(p, int(parts.samples[p + 1] - parts.samples[p])) for p in range(len(parts))]
    markers = {u.index: json.loads(path.read_text()) for u in units
               if (path := _rows_path(out, u.index).with_suffix(".json")).exists()}
    run_stage(actors, "locate", units, markers, "locate", "sample", progress)

    located_at = time.perf_counter()
    caption_of = _column([part_paths(embed_dir, p)["samples"] for p in range(len(parts))], "caption_id",
                         lambda p: pq.read_table(p, columns=["caption_id"]))
    size = _column([_rows_path(out, p) for p in range(len(parts))], "size", _read_ipc)
    eligible = caption_ok[caption_of]
    skipped = Counter({"caption_embedding_invalid": int((~eligible).sum()),
                       "no_image": int((eligible & (size == NO_IMAGE)).sum()),
                       "image_missing": int((eligible & (size == IMAGE_MISSING)).sum())})
    layout_path = out / LAYOUT / "layout.parquet"
    if not layout_path.exists():
        sample_bytes = _sample_bytes(out, len(parts), caption_of, size, k, dim, opts.with_embeddings)
        plan_layout(np.flatnonzero(eligible & (size >= 0)), caption_of, sample_bytes, neighbor_ids, opts) \
            .save(layout_path)
        del sample_bytes
    del caption_of, size, eligible
    layout = Layout.load(layout_path)
    bounds = layout.shard_bounds()

    laid_out_at = time.perf_counter()
    written = {i: json.loads(done_marker(out, i).read_text()) for i in range(len(bounds) - 1)
               if done_marker(out, i).exists()}
    shard_units = [Unit(i, int(bounds[i + 1] - bounds[i])) for i in range(len(bounds) - 1)]
    run_stage(actors, "write", shard_units, written, "shards", "sample", progress,
              prepare=lambda u: (u.index, layout.sample[bounds[u.index]:bounds[u.index + 1]],
                                 layout.group[bounds[u.index]:bounds[u.index + 1]]))

    wrote_at = time.perf_counter()
    for m in written.values():
        skipped.update(m["skipped"])
    undecodable = np.concatenate([np.asarray(m["skipped_samples"], dtype=np.int64) for m in written.values()] +
                                 [np.empty(0, dtype=np.int64)])
    groups = np.bincount(layout.group[~np.isin(layout.sample, undecodable)], minlength=int(layout.group.max(
        initial=-1)) + 1)
    groups = groups[groups > 0]
    n_written = sum(m["samples"] for m in written.values())
    return {
        "skipped": {r: n for r, n in sorted(skipped.items()) if n},
        "written": n_written,
        "groups": {"count": len(groups), "size_mean": float(groups.mean()) if len(groups) else 0.0,
                   "singletons": int((groups == 1).sum()),
                   "in_group_neighbors_mean": sum(m["in_group_neighbors"] for m in written.values())
                   / max(n_written, 1)},
        "shards": [{"name": shard_name(i), "samples": written[i]["samples"], "bytes": written[i]["bytes"]}
                   for i in range(len(bounds) - 1) if written[i]["samples"]],
        "undecodable": [key for m in written.values() for key in m["skipped_keys"]],
        "timing": {"locate_seconds": round(located_at - started, 2),
                   "layout_seconds": round(laid_out_at - located_at, 2),
                   "write_seconds": round(wrote_at - laid_out_at, 2)},
    }
