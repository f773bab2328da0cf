"""The embed directory: what `xclr-prep embed` writes and every later stage reads (docs/design.md, Data contracts).

Layout of an embed directory ``D`` (``NNNNN`` = part number, 5 digits, parts numbered 0..P-1)::

    D/manifest.json                    written last: its presence means the directory is complete
    D/captions/part-NNNNN.parquet      CAPTIONS_SCHEMA: the unique captions first seen in part NNNNN
    D/embeddings/part-NNNNN.npy        float16|float32 array (rows, dim), L2-normalised, rows aligned with captions
    D/samples/part-NNNNN.parquet       SAMPLES_SCHEMA: every kept input row of part NNNNN
    D/done/part-NNNNN.json             per-part done marker, written after the part's three files

Caption ids are dense int64 from 0, in order of first appearance in the input; part p holds the contiguous id
range ``[caption_start, caption_end)`` recorded in the manifest, so concatenating the parts in order gives ids
0..U-1 with no per-row work.

Where a sample's image is (``image_source``, ``image_member``, ``image_row``):
- tar member: source = tar path, member = member name, row = -1;
- bytes column of a table: source = table path, member = column name, row = row index in that file;
- image file: source = file path, member = "", row = -1;
- no image: source = "", member = "", row = -1.
``label`` is the class index (into ``manifest["classnames"]`` when present), -1 when the sample has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclr_schemas.names import DONE
from xclr_schemas.versioned import read_versioned_manifest, unreadable_as

EMBED_SCHEMA_VERSION = "xclr.embed/1"
WHAT = "embed directory"
DTYPES = ("float16", "float32")

CAPTIONS_SCHEMA = pa.schema([("caption_id", pa.int64()), ("text", pa.string())])
SAMPLES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption_id", pa.int64()),
        ("image_source", pa.string()),
        ("image_member", pa.string()),
        ("image_row", pa.int64()),
        ("label", pa.int64()),
    ]
)


def part_name(index: int) -> str:
    """File stem of part `index`: ``part-00042``."""
    return f"part-{index:05d}"


def part_paths(root: Path, index: int) -> dict[str, Path]:
    """The four files of part `index` under embed directory `root`."""
    stem = part_name(index)
    return {
        "captions": root / "captions" / f"{stem}.parquet",
        "embeddings": root / "embeddings" / f"{stem}.npy",
        "samples": root / "samples" / f"{stem}.parquet",
        "done": root / DONE / f"{stem}.json",
    }


class EmbedDirError(ValueError):
    """An embed directory that is incomplete, from another schema version, or inconsistent with its manifest."""


@dataclass(frozen=True)
class EmbedDir:
    """A loaded embed directory. ``embeddings[i]`` is the embedding of caption ``caption_ids[i]`` (= i)."""

    manifest: dict
    caption_ids: np.ndarray  # int64 (U,), equal to arange(U)
    embeddings: np.ndarray  # (U, dim), float16 or float32, C-contiguous
    captions: list[str]  # (U,) texts
    samples: pa.Table  # SAMPLES_SCHEMA, rows in input order


def read_manifest(path: str | Path) -> dict:
    """The manifest of a complete embed directory; EmbedDirError if absent or of another schema version."""
    return read_versioned_manifest(Path(path), EMBED_SCHEMA_VERSION, EmbedDirError, WHAT, "xclr-prep embed")


def _check_parts(root: Path, manifest: dict) -> list[dict]:
    for part in manifest["parts"]:
        missing = [str(p) for p in part_paths(root, part["index"]).values() if not p.exists()]
        if missing:
            raise EmbedDirError(f"{root}: part {part['index']} is missing {missing[0]}")
    return manifest["parts"]


class EmbeddingRows:
    """Row access to an embed directory's embeddings without loading them: the part files are memory-mapped.

    ``block(start, end)`` and ``take(ids)`` return float32 copies; memory is only what they return.
    """

    def __init__(self, path: str | Path, manifest: dict | None = None) -> None:
        root = Path(path)
        manifest = manifest or read_manifest(root)
        with unreadable_as(EmbedDirError, root, WHAT):
            self.n, self.dim = int(manifest["counts"]["unique_captions"]), int(manifest["model"]["dim"])
            ends = [int(p["caption_end"]) for p in manifest["parts"]]
            self.starts = np.array([p["caption_start"] for p in manifest["parts"]], dtype=np.int64)
            if self.starts.tolist() != [0, *ends[:-1]][:len(ends)] or (ends[-1] if ends else 0) != self.n:
                raise EmbedDirError(f"{root}: its parts do not hold the caption ids 0..{self.n - 1} in order")
            self.parts = [self._part(root, part) for part in _check_parts(root, manifest)]

    def _part(self, root: Path, part: dict) -> np.ndarray:
        emb = np.load(part_paths(root, part["index"])["embeddings"], mmap_mode="r", allow_pickle=False)
        if emb.shape != (part["caption_end"] - part["caption_start"], self.dim) or emb.dtype.name not in DTYPES:
            raise EmbedDirError(f"{root}: part {part['index']} does not hold captions "
                                f"[{part['caption_start']}, {part['caption_end']}) as {' or '.join(DTYPES)}")
        return emb

    def block(self, start: int, end: int) -> np.ndarray:
        """Rows [start, end) as a (end - start, dim) float32 array."""
        out = np.empty((end - start, self.dim), dtype=np.float32)
        for p in range(max(0, int(np.searchsorted(self.starts, start, "right")) - 1), len(self.parts)):
            s = int(self.starts[p])
            if s >= end:
                break
            lo, hi = max(start, s), min(end, s + len(self.parts[p]))
            if lo < hi:
                out[lo - start:hi - start] = self.parts[p][lo - s:hi - s]
        return out

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (any order, repeats allowed) as a (len(ids), dim) float32 array."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        part_of = np.searchsorted(self.starts, ids, "right") - 1
        for p in np.unique(part_of):
            sel = part_of == p
            out[sel] = self.parts[p][ids[sel] - self.starts[p]]
        return out


def _read_part_tables(root: Path, manifest: dict, kind: str, schema: pa.Schema) -> pa.Table:
    tables = [pq.read_table(part_paths(root, p["index"])[kind], schema=schema) for p in _check_parts(root, manifest)]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_captions(path: str | Path, manifest: dict | None = None) -> pa.ChunkedArray:
    """The caption texts, element i = caption id i (Arrow strings: about 1 GB at 12M captions)."""
    root = Path(path)
    manifest = manifest or read_manifest(root)
    with unreadable_as(EmbedDirError, root, WHAT):
        table = _read_part_tables(root, manifest, "captions", CAPTIONS_SCHEMA)
        n = int(manifest["counts"]["unique_captions"])
        if not np.array_equal(table.column("caption_id").to_numpy(), np.arange(n)):
            raise EmbedDirError(f"{root}: caption ids are not 0..{n - 1} in part order")
    return table.column("text")


def read_samples(path: str | Path, manifest: dict | None = None) -> pa.Table:
    """The sample table (SAMPLES_SCHEMA), rows in input order."""
    root = Path(path)
    manifest = manifest or read_manifest(root)
    with unreadable_as(EmbedDirError, root, WHAT):
        table = _read_part_tables(root, manifest, "samples", SAMPLES_SCHEMA)
        if table.num_rows != manifest["counts"]["kept"]:
            raise EmbedDirError(f"{root}: {table.num_rows} samples on disk, manifest says "
                                f"{manifest['counts']['kept']}")
    return table


def load_embed_dir(path: str | Path) -> EmbedDir:
    """Load a complete embed directory into memory: one contiguous (U, dim) embedding array, ids, texts, samples.

    Memory: U * dim * itemsize for the embeddings plus the caption texts and the sample table. For corpora that
    should not be held in memory, use `EmbeddingRows`, `read_captions` and `read_samples`.
    Raises EmbedDirError when the directory is incomplete or disagrees with its manifest.
    """
    root = Path(path)
    manifest = read_manifest(root)
    rows = EmbeddingRows(root, manifest)
    if manifest.get("dtype") not in DTYPES:
        raise EmbedDirError(f"{root}: its manifest's dtype {manifest.get('dtype')!r} is not {' or '.join(DTYPES)}")
    embeddings = np.empty((rows.n, rows.dim), dtype=manifest["dtype"])
    for start, part in zip(rows.starts, rows.parts):
        embeddings[start:start + len(part)] = part
    captions = read_captions(root, manifest)
    return EmbedDir(manifest=manifest, caption_ids=np.arange(rows.n, dtype=np.int64), embeddings=embeddings,
                    captions=captions.to_pylist(), samples=read_samples(root, manifest))
