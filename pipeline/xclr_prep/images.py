"""Where each sample's image bytes are, and whether they decode.

`locate_rows` turns the embed directory's image references (see `xclr_schemas.embed_dir`) into byte ranges
(blob path, offset, size) that a shard writer reads with one ``pread`` (or one ranged GET for a URL, see
`xclr_schemas.storage`), in any order:

- member of a plain tar: the tar itself, at the member's data offset (headers are read, data is not);
- member of a compressed tar: the tar is decompressed once into ``stage_dir`` and read from there;
- bytes column of a table: the rows of one embed part are copied once into a blob file in ``stage_dir``;
- image file: the file, offset 0.

A sample whose image cannot be found gets size NO_IMAGE (the corpus row had none; skip reason ``no_image``) or
IMAGE_MISSING (the member, row or file named is not there; ``image_missing``). `check_image` checks that the
bytes decode and names the format; a failure is reason ``image_undecodable``.
"""

from __future__ import annotations

import gzip
import hashlib
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

LOCATION_SCHEMA = pa.schema([("blob", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])
NO_IMAGE, IMAGE_MISSING = -1, -2  # the size of a sample whose image was not located, by reason


def locate_rows(samples: pa.Table, stage_dir: Path, part: int) -> pa.Table:
    """LOCATION_SCHEMA, one row per row of `samples` (SAMPLES_SCHEMA, part `part` of an embed directory), in order.

    Samples are located source by source. A compressed tar is staged as ``stage_dir/SOURCE_DIGEST.tar``, once for
    every part that uses it; an image column as ``stage_dir/pPART-SOURCE_DIGEST.blob``, its rows of this part only.
    """
    encoded = samples.column("image_source").combine_chunks().dictionary_encode()
    sources, codes = encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False)
    members = samples.column("image_member").to_numpy(zero_copy_only=False)
    rows = samples.column("image_row").to_numpy()
    n = samples.num_rows
    blob = np.full(n, "", dtype=object)
    offset = np.zeros(n, dtype=np.int64)
    size = np.full(n, IMAGE_MISSING, dtype=np.int64)
    by_source = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[by_source], np.arange(len(sources) + 1))
    for code, source in enumerate(sources):
        of_source = by_source[bounds[code]:bounds[code + 1]]
        if source == "":
            size[of_source] = NO_IMAGE
            continue
        digest = hashlib.sha1(source.encode()).hexdigest()[:16]
        for kind, picked in (("column", of_source[rows[of_source] >= 0]),
                             ("tar", of_source[(rows[of_source] < 0) & (members[of_source] != "")]),
                             ("file", of_source[(rows[of_source] < 0) & (members[of_source] == "")])):
            if not len(picked):
                continue
            if kind == "file":
                found = [(i, source, 0, storage.file_size(source)) for i in picked.tolist() if storage.is_file(source)]
            elif kind == "tar":
                found = _locate_in_tar(source, members[picked].tolist(), picked, stage_dir / f"{digest}.tar")
            else:
                found = _locate_in_column(source, list(zip(members[picked].tolist(), rows[picked].tolist())),
                                          picked, stage_dir / f"p{part:05d}-{digest}.blob")
            for i, path, start, length in found:
                blob[i], offset[i], size[i] = path, start, length
    return pa.table([pa.array(blob, pa.string()), offset, size], schema=LOCATION_SCHEMA)


def _locate_in_tar(path: str, members: list[str], samples: np.ndarray, stage_path: Path) -> list[tuple]:
    if path.lower().endswith((".gz", ".tgz")):
        if not stage_path.exists():  # staged by an earlier part otherwise
            write_atomic(stage_path, lambda tmp: _decompress(path, tmp))
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


def _decompress(path: str, tmp: Path) -> None:
    with storage.open_input(path) as raw, gzip.open(raw, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


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
