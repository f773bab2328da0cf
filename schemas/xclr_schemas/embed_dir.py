"""The embed directory: what `xclr-prep embed` writes and every later stage reads (shared/DESIGN.md section 3).

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

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EMBED_SCHEMA_VERSION = "xclr.embed/1"
MANIFEST = "manifest.json"

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
        "done": root / "done" / f"{stem}.json",
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
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise EmbedDirError(f"{root} is not a complete embed directory (no {MANIFEST}; rerun xclr-prep embed)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("schema_version") != EMBED_SCHEMA_VERSION:
        raise EmbedDirError(
            f"{root} has schema version {manifest.get('schema_version')!r}, this xclr reads {EMBED_SCHEMA_VERSION!r}"
        )
    return manifest


def load_embed_dir(path: str | Path) -> EmbedDir:
    """Load a complete embed directory into memory: one contiguous (U, dim) embedding array, ids, texts, samples.

    Memory: U * dim * itemsize for the embeddings plus the caption texts and the sample table.
    Raises EmbedDirError when the directory is incomplete or disagrees with its manifest.
    """
    root = Path(path)
    manifest = read_manifest(root)
    n, dim = manifest["counts"]["unique_captions"], manifest["model"]["dim"]
    embeddings = np.empty((n, dim), dtype=np.dtype(manifest["dtype"]))
    caption_ids = np.empty(n, dtype=np.int64)
    texts: list[str] = []
    samples = []
    for part in manifest["parts"]:
        files = part_paths(root, part["index"])
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            raise EmbedDirError(f"{root}: part {part['index']} is missing {missing[0]}")
        start, end = part["caption_start"], part["caption_end"]
        emb = np.load(files["embeddings"], mmap_mode="r", allow_pickle=False)
        captions = pq.read_table(files["captions"], schema=CAPTIONS_SCHEMA)
        if emb.shape != (end - start, dim) or captions.num_rows != end - start:
            raise EmbedDirError(f"{root}: part {part['index']} does not hold captions [{start}, {end})")
        embeddings[start:end] = emb
        caption_ids[start:end] = captions.column("caption_id").to_numpy()
        texts.extend(captions.column("text").to_pylist())
        samples.append(pq.read_table(files["samples"], schema=SAMPLES_SCHEMA))
    if not np.array_equal(caption_ids, np.arange(n)):
        raise EmbedDirError(f"{root}: caption ids are not 0..{n - 1} in part order")
    table = pa.concat_tables(samples) if samples else SAMPLES_SCHEMA.empty_table()
    if table.num_rows != manifest["counts"]["kept"]:
        raise EmbedDirError(f"{root}: {table.num_rows} samples on disk, manifest says {manifest['counts']['kept']}")
    return EmbedDir(manifest=manifest, caption_ids=caption_ids, embeddings=embeddings, captions=texts, samples=table)
