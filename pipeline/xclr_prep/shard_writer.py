"""Writing one training shard: its samples in, a WebDataset tar and a done marker out (xclr_schemas.shards).

Runs with or without Ray. The tar is written under a temporary name, fsynced and renamed; the caller then writes
the done marker (`done_marker`), so a shard whose marker exists is complete. Tar headers carry no time, owner or
mode of this machine, so the same samples give the same bytes on every run.
"""

from __future__ import annotations

import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from xclr_prep.images import check_image
from xclr_schemas import npy_bytes, shard_name
from xclr_schemas.atomic import write_atomic
from xclr_schemas.names import DONE
from xclr_schemas.shards import EMBEDDING_SUFFIX, META_SUFFIX, NEIGHBORS_SUFFIX, TEXT_SUFFIX
from xclr_schemas.storage import read_range

# Columns of the table a shard is written from, one row per sample in shard order.
SHARD_INPUT_COLUMNS = ("sample", "key", "text", "caption_id", "group", "label", "blob", "offset", "size")
TAR_BLOCK = 512
CHUNK = 256


def tar_bytes(sizes: np.ndarray) -> np.ndarray:
    """Bytes a tar member of each size takes: a 512-byte header plus the data padded to 512."""
    return TAR_BLOCK + -(-sizes // TAR_BLOCK) * TAR_BLOCK


def done_marker(out: Path, index: int) -> Path:
    return out / DONE / f"{shard_name(index)[:-4]}.json"


def _member(name: str, data: bytes) -> bytes:
    """One tar member: header (no time, owner or mode of this machine), data, padding to 512."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    return info.tobuf(tarfile.PAX_FORMAT) + data + bytes(-len(data) % TAR_BLOCK)


def write_shard(out: Path, index: int, samples: pa.Table, neighbors: np.ndarray, embeddings: np.ndarray | None,
                threads: int) -> dict:
    """Write shard `index` of `out` from `samples` (SHARD_INPUT_COLUMNS), ``neighbors[i]`` (k,) and optionally
    ``embeddings[i]`` (fp16) being those of sample i. Images that do not decode are skipped and listed.

    Samples are read, checked and written CHUNK at a time, so memory is one chunk of images whatever the shard size.
    Returns the done marker's content: index, name, samples written, bytes, skipped {reason: count}, and the
    skipped samples and their keys.
    """
    cols = {c: samples.column(c).to_pylist() for c in SHARD_INPUT_COLUMNS}
    name = shard_name(index)
    skipped: list[int] = []

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f, ThreadPoolExecutor(threads) as pool:
            for lo in range(0, samples.num_rows, CHUNK):
                chunk = range(lo, min(samples.num_rows, lo + CHUNK))
                images = list(pool.map(read_range, *(cols[c][lo:chunk.stop] for c in ("blob", "offset", "size"))))
                for i, image, suffix in zip(chunk, images, pool.map(check_image, images)):
                    if suffix is None:
                        skipped.append(i)
                        continue
                    f.write(b"".join(_member(f"{cols['key'][i]}.{member}", data)
                                     for member, data in _members(cols, i, suffix, image, neighbors, embeddings)))
            f.write(bytes(2 * TAR_BLOCK))  # end-of-archive marker

    write_atomic(out / name, write)
    written = samples.num_rows - len(skipped)
    if not written:
        (out / name).unlink()
    return {"index": index, "name": name, "samples": written, "bytes": (out / name).stat().st_size if written else 0,
            "skipped": {"image_undecodable": len(skipped)} if skipped else {},
            "skipped_samples": [cols["sample"][i] for i in skipped], "skipped_keys": [cols["key"][i] for i in skipped]}


def _members(cols: dict, i: int, suffix: str, image: bytes, neighbors: np.ndarray,
             embeddings: np.ndarray | None) -> list[tuple[str, bytes]]:
    meta = {"caption_id": cols["caption_id"][i], "group": cols["group"][i]}
    if cols["label"][i] >= 0:
        meta["label"] = cols["label"][i]
    members = [(suffix, image), (TEXT_SUFFIX, cols["text"][i].encode()), (META_SUFFIX, json.dumps(meta).encode()),
               (NEIGHBORS_SUFFIX, npy_bytes(neighbors[i]))]
    if embeddings is not None:
        members.append((EMBEDDING_SUFFIX, npy_bytes(embeddings[i])))
    return members
