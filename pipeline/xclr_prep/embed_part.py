"""The embedding core: one scan part in, one embed-directory part out (captions, embeddings, samples, done).

Runs with or without Ray. Files are published atomically; the done marker is written last, so a part whose
marker exists is complete, and a part killed mid-way is simply done again.

Captions are encoded and written ENCODE_CHUNK at a time, so a worker's memory does not grow with the part size.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclr_prep.dedup import PartIds
from xclr_prep.encoder import CaptionEncoder
from xclr_schemas import CAPTIONS_SCHEMA, SAMPLES_SCHEMA, part_paths
from xclr_schemas.atomic import write_atomic, write_json_atomic

ENCODE_CHUNK = 16_384


def write_embed_part(
    out: Path, index: int, scan_path: Path, ids: PartIds, encoder: CaptionEncoder, dtype: str, worker: dict
) -> dict:
    """Embed the captions first seen in scan part `scan_path` and write part `index` of embed directory `out`.

    Returns the done marker: index, samples, caption_start/end, the model's weights digest, the worker and the
    seconds spent encoding.
    """
    scan = pq.read_table(scan_path)
    kept = pa.array(ids.caption_ids >= 0)
    samples = pa.table(
        {
            "key": scan.column("key").filter(kept),
            "caption_id": pa.array(ids.caption_ids[ids.caption_ids >= 0]),
            **{c: scan.column(c).filter(kept) for c in ("image_source", "image_member", "image_row", "label")},
        },
        schema=SAMPLES_SCHEMA,
    )
    texts = scan.column("caption").filter(pa.array(ids.is_first))
    if len(texts) != ids.end - ids.start:
        raise RuntimeError(f"{scan_path} holds {len(texts)} new captions, the caption ids say {ids.end - ids.start}")
    captions = pa.table({"caption_id": np.arange(ids.start, ids.end, dtype=np.int64), "text": texts},
                        schema=CAPTIONS_SCHEMA)
    files = part_paths(out, index)
    seconds = 0.0

    def save_npy(path: Path) -> None:
        nonlocal seconds
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                  "shape": (len(texts), encoder.dim)}
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for lo in range(0, len(texts), ENCODE_CHUNK):
                started = time.perf_counter()
                chunk = encoder.encode(texts.slice(lo, ENCODE_CHUNK).to_pylist()).astype(dtype)
                seconds += time.perf_counter() - started
                f.write(chunk.tobytes())

    write_atomic(files["embeddings"], save_npy)
    write_atomic(files["captions"], lambda p: pq.write_table(captions, p))
    write_atomic(files["samples"], lambda p: pq.write_table(samples, p))
    marker = {
        "index": index,
        "scan_part": scan_path.name,
        "samples": samples.num_rows,
        "caption_start": ids.start,
        "caption_end": ids.end,
        "weights_sha256": encoder.weights_sha256,
        "worker": worker,
        "encode_seconds": round(seconds, 3),
    }
    write_json_atomic(files["done"], marker)
    return marker
