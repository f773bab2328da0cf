"""Where each sample's image bytes are, and whether they decode.

`locate` turns the embed directory's image references (see `xclr_schemas.embed_dir`) into byte ranges
(blob path, offset, size) that a shard writer reads with one ``pread`` (or one ranged GET for a URL, see
`xclr_schemas.storage`), in any order:

- member of a plain tar: the tar itself, at the member's data offset (headers are read, data is not);
- member of a compressed tar: the tar is decompressed once into ``stage_dir`` and read from there;
- bytes column of a table: the column is copied once into a blob file in ``stage_dir``;
- image file: the file, offset 0.

A sample whose image cannot be found is skipped with reason ``no_image`` (the corpus row had none) or
``image_missing`` (the member, row or file named is not there). `check_image` checks that the bytes decode and
names the format; a failure is reason ``image_undecodable``.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from xclr_schemas import storage
from xclr_schemas.atomic import write_atomic
from xclr_schemas.shards import IMAGE_SUFFIX_OF_FORMAT

LOCATION_SCHEMA = pa.schema([("sample", pa.int64()), ("blob", pa.string()), ("offset", pa.int64()),
                             ("size", pa.int64())])


def locate(kind: str, source: str, refs: list, samples: np.ndarray, stage_path: Path) -> tuple[pa.Table, int]:
    """(LOCATION_SCHEMA table of the samples found, number not found) for samples of one source.

    ``refs[i]`` points at the image of sample ``samples[i]``: its member name (kind "tar", `source` the tar), its
    (column, row) (kind "column", `source` the Parquet file) or its path (kind "file"; `source` unused).
    """
    if kind == "file":
        found = [(s, p, 0, storage.file_size(p)) for s, p in zip(samples.tolist(), refs) if storage.is_file(p)]
    elif kind == "tar":
        found = _locate_in_tar(source, refs, samples, stage_path)
    else:
        found = _locate_in_column(source, refs, samples, stage_path)
    columns = list(zip(*found)) if found else [[] for _ in LOCATION_SCHEMA]
    table = pa.table([pa.array(c, f.type) for c, f in zip(columns, LOCATION_SCHEMA)], schema=LOCATION_SCHEMA)
    return table, len(samples) - len(found)


def _locate_in_tar(path: str, members: list[str], samples: np.ndarray, stage_path: Path) -> list[tuple]:
    if path.lower().endswith((".gz", ".tgz")):
        def decompress(tmp: Path) -> None:
            with storage.open_input(path) as raw, gzip.open(raw, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

        write_atomic(stage_path, decompress)
        path = str(stage_path)
    size = storage.file_size(path)
    where: dict[str, tuple[int, int]] = {}
    try:
        with storage.open_input(path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            for m in tar:
                if m.isfile() and m.offset_data + m.size <= size:
                    where.setdefault(m.name, (m.offset_data, m.size))
    except (OSError, tarfile.TarError):
        pass  # members read before the damage are still located; the rest count as missing
    return [(s, path, *where[m]) for s, m in zip(samples.tolist(), members) if m in where]


def _locate_in_column(path: str, refs: list[tuple[str, int]], samples: np.ndarray, stage_path: Path) -> list[tuple]:
    column = refs[0][0]
    wanted = {row: s for (_, row), s in zip(refs, samples.tolist())}
    found = []

    def copy(tmp: Path) -> None:
        offset, row = 0, 0
        with open(tmp, "wb") as out, storage.open_input(path) as src:
            for batch in pq.ParquetFile(src).iter_batches(batch_size=1024, columns=[column]):
                for value in batch.column(0).to_pylist():
                    if row in wanted and value:
                        out.write(value)
                        found.append((wanted[row], str(stage_path), offset, len(value)))
                        offset += len(value)
                    row += 1

    write_atomic(stage_path, copy)
    return found


def check_image(data: bytes) -> str | None:
    """The shard suffix of the image (jpg, png, ...) if it decodes, else None.

    PNG: every chunk's CRC and the chunk structure up to IEND are checked (``verify``; 16x faster than inflating,
    and any damaged or truncated byte fails a CRC). JPEG: decoded at reduced scale (``draft``): every entropy-coded
    segment is still read. Other formats: decoded in full.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                suffix = IMAGE_SUFFIX_OF_FORMAT.get(img.format)
                if img.format == "PNG":
                    img.verify()
                else:
                    img.draft("RGB", (64, 64))
                    img.load()
        return suffix
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError):
        return None
