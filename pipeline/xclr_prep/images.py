"""Where each sample's image bytes are, and whether they decode.

`locate_rows` turns the embed directory's image references (see `xclr_schemas.embed_dir`) into byte ranges
(blob path, offset, size) that a shard writer reads with one ``pread`` (or one ranged GET for a URL, see
`xclr_schemas.storage`), in any order:

- image file: the file, offset 0;
- member of a tar, or row of a bytes column of a table: where the corpus reader that made the reference says
  (`xclr_prep.corpus.Reader.locate`; a compressed tar or a table's bytes are staged once in ``stage_dir``).

A sample whose image cannot be found gets size NO_IMAGE (the corpus row had none; skip reason ``no_image``) or
IMAGE_MISSING (the member, row or file named is not there; ``image_missing``). `check_image` checks that the
bytes decode and names the format; a failure is reason ``image_undecodable``.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from xclr_prep.corpus import IMAGE_READERS
from xclr_schemas import storage
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
                             ("member", of_source[(rows[of_source] < 0) & (members[of_source] != "")]),
                             ("file", of_source[(rows[of_source] < 0) & (members[of_source] == "")])):
            if not len(picked):
                continue
            if kind == "file":
                found = [(i, source, 0, storage.file_size(source)) for i in picked.tolist() if storage.is_file(source)]
            else:
                reader = IMAGE_READERS[kind]
                refs = list(zip(members[picked].tolist(), rows[picked].tolist()))
                found = reader.locate(source, refs, picked.tolist(), stage_dir / reader.stage_name(digest, part))
            for i, path, start, length in found:
                blob[i], offset[i], size[i] = path, start, length
    return pa.table([pa.array(blob, pa.string()), offset, size], schema=LOCATION_SCHEMA)


def check_image(data: bytes) -> str | None:
    """The shard suffix of the image (jpg, png, ...) if it decodes, else None.

    PNG: every chunk's CRC and the chunk structure up to IEND are checked (``verify``: any damaged or truncated
    byte fails a CRC), and the image data is inflated, in pieces and discarded, to the exact size the header
    declares (`_png_data_complete`: a crafted PNG can carry valid CRCs over too little data). JPEG: decoded at
    reduced scale (``draft``): every entropy-coded segment is still read. Other formats: decoded in full.
    An image of more than PIL's ``MAX_IMAGE_PIXELS`` (PIL's decompression-bomb warning) is refused, as a bomb.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                suffix = IMAGE_SUFFIX_OF_FORMAT.get(img.format)
                if img.format == "PNG":
                    img.verify()
                    return suffix if _png_data_complete(data) else None
                img.draft("RGB", (64, 64))
                img.load()
        return suffix
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PIECE = 1 << 16


def _png_data_complete(data: bytes) -> bool:
    """Whether the IDAT chunks of a PNG (whose chunk structure `verify` has checked) hold one whole zlib stream of
    exactly the bytes its header needs: per row of each pass (one pass, or Adam7's seven), a filter byte and
    ceil(width * bit depth * channels / 8) bytes. Inflated `_PIECE` bytes at a time, so memory stays small whatever
    size the header declares."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    bits = depth * _PNG_CHANNELS.get(colour, 0)
    need = 0
    for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        need += h * (1 + (w * bits + 7) // 8) if w > 0 and h > 0 else 0
    inflate, got, pos = zlib.decompressobj(), 0, 8
    while pos + 8 <= len(data) and got <= need:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            piece = data[pos + 8:pos + 8 + length]
            while got <= need:
                out = inflate.decompress(piece, _PIECE)
                got, piece = got + len(out), inflate.unconsumed_tail
                if not piece and len(out) < _PIECE:
                    break
        pos += 12 + length
    return inflate.eof and got == need
