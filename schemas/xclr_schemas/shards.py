"""Training shards: what `xclr-prep graph` writes and `xclr-train` streams (docs/design.md, Data contracts).

Layout of a shards directory ``S``::

    S/manifest.json            written last: present = complete (graph, layout and counts; see below)
    S/sizes.json               {"shard-000000.tar": samples, ...}, as open_clip reads it
    S/shard-NNNNNN.tar         WebDataset tars, about ``shard_bytes`` / ``shard_samples`` each
    S/done/shard-NNNNNN.json   per-shard marker, written after the tar is renamed into place
    S/graph/                   the caption graph (`xclr_schemas.graph_dir`), unless another one was reused
    S/plan.json, S/layout/     fingerprint and the sample layout (resume state)

Members of one sample, in this order, all named ``KEY.<suffix>`` (keys contain no dots and no slashes):

    KEY.<ext>      the image bytes as in the source; ext = jpg | png | webp | gif | bmp | tiff (from its content)
    KEY.txt        the caption (normalised, UTF-8)
    KEY.json       {"caption_id": int, "group": int} plus "label": int when the sample has one
    KEY.nbr.npy    NEIGHBOR_DTYPE array of shape (k,): the caption's top-k neighbours, best first
    KEY.emb.npy    optional (``--with-embeddings``): the caption embedding, float16, shape (dim,)

Samples of one neighbour group are contiguous in one shard and share ``group``; groups are placed at random.
Nothing is pickled: ``.npy`` members load with ``numpy.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from xclr_schemas.versioned import read_versioned_manifest

SHARDS_SCHEMA_VERSION = "xclr.shards/1"
# PIL format name -> the image member's suffix; the trainer finds the image as the member with one of these.
IMAGE_SUFFIX_OF_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
IMAGE_SUFFIXES = tuple(IMAGE_SUFFIX_OF_FORMAT.values())
TEXT_SUFFIX, META_SUFFIX, NEIGHBORS_SUFFIX, EMBEDDING_SUFFIX = "txt", "json", "nbr.npy", "emb.npy"


class ShardsDirError(ValueError):
    """A shards directory that is incomplete or of another schema version."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def read_shards_manifest(path: str | Path) -> dict:
    """The manifest of a complete shards directory (a path or URL); ShardsDirError if absent or of another schema
    version."""
    return read_versioned_manifest(path, SHARDS_SCHEMA_VERSION, ShardsDirError, "shards directory",
                                   "xclr-prep graph")


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` file of `array`, as stored in a shard member."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    """Inverse of `npy_bytes` (never unpickles). ValueError when `data` is not an ``.npy`` array without objects
    whose header's shape and dtype account for exactly the bytes after it (cut short, empty, damaged, pickled, or
    declaring more than it holds: checked before anything is allocated)."""
    buf = io.BytesIO(data)
    try:
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, _, dtype = read_header[np.lib.format.read_magic(buf)](buf)
    except (EOFError, OSError, KeyError, ValueError) as exc:
        raise ValueError(f"not an .npy array ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject or int(np.prod(shape, dtype=object)) * dtype.itemsize != len(data) - buf.tell():
        raise ValueError(f"an .npy header of shape {shape} and dtype {dtype} over {len(data) - buf.tell()} bytes")
    return np.load(io.BytesIO(data), allow_pickle=False)
