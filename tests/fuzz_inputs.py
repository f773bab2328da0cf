"""Hostile inputs for the fuzzers (tests/test_fuzz_prep.py, tests/test_fuzz_train.py): hypothesis strategies of
cases, each case a small frozen recipe (its repr is the reproducer) that builds its bytes.

- `tar_cases`: img2dataset-style tars: member names with "..", absolute paths, NUL, dots, non-UTF-8 bytes; symlinks,
  hard links, directories; zero-size members and members whose header declares gigabytes; duplicate keys; gzip;
  no end-of-archive marker; cut anywhere; flipped bytes.
- `image_cases`: images of every format and mode PIL writes (CMYK, 16-bit, palette, 1-bit, animated GIF/WebP/APNG),
  decompression bombs (a 100k x 100k PNG of a few bytes, a zlib bomb, a GIF screen of 1e8 pixels), then damaged.
- `table_cases`: Parquet/CSV/TSV/JSONL with wrong types, missing and extra columns, huge strings, nulls, NaN,
  non-UTF-8 bytes, ragged CSV rows; the options that read them.
- shard samples (`shard_tar_cases`): the trainer's members with any one missing, extra or wrong (.nbr.npy of another
  shape or dtype, pickled, neighbour ids out of range, non-finite similarities; JSON that is not JSON or of wrong
  types), inside hostile tars.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import struct
import tarfile
import zlib
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from xclr_schemas import NEIGHBOR_DTYPE, npy_bytes

GIB = 1 << 30


def _short(data: bytes) -> str:
    return repr(data) if len(data) <= 48 else f"<{len(data)} bytes {data[:24]!r}...>"


# ---------------------------------------------------------------- damage to any file's bytes


@dataclass(frozen=True)
class Damage:
    """Keep the first `cut` fraction of the bytes (None: all), after XOR-ing the byte at each fraction of
    `flips` with its mask."""
    cut: float | None = None
    flips: tuple[tuple[float, int], ...] = ()

    def apply(self, data: bytes) -> bytes:
        if not data:
            return data
        buf = bytearray(data)
        for where, mask in self.flips:
            buf[min(int(where * len(buf)), len(buf) - 1)] ^= mask
        return bytes(buf if self.cut is None else buf[: int(self.cut * len(buf))])


fractions = st.floats(0, 1, allow_nan=False)
damages = st.one_of(
    st.just(Damage()),
    st.builds(Damage, cut=fractions),
    st.builds(Damage, flips=st.lists(st.tuples(fractions, st.integers(1, 255)), min_size=1, max_size=4).map(tuple)),
)
some_damage = damages.filter(lambda d: d != Damage())


# ---------------------------------------------------------------- images


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _frames(mode: str) -> list[Image.Image]:
    return [Image.new(mode, (6, 5), c) for c in ((255, 0, 0, 255), (0, 255, 0, 128))] if mode == "RGBA" else \
        [Image.new(mode, (6, 5), c) for c in (1, 200)]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int, idat: bytes) -> bytes:
    """A PNG whose header declares width x height RGB with `idat` as its (valid-CRC) image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _zlib_bomb_png(side: int) -> bytes:
    """A side x side RGB PNG of zeros: a few hundred kB that inflate to 3 side^2 bytes."""
    z = zlib.compressobj(9)
    row = bytes(1 + 3 * side)
    return _png_declaring(side, side, b"".join(z.compress(row) for _ in range(side)) + z.flush())


def _gif_screen(width: int, height: int) -> bytes:
    """A GIF whose logical screen is width x height with one 1x1 frame."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + bytes(6)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame + b"\x3b"


IMAGE_MAKERS = {
    "png-RGB": lambda: _save(Image.new("RGB", (7, 5), (9, 99, 199)), "PNG"),
    "png-RGBA": lambda: _save(Image.new("RGBA", (7, 5), (9, 99, 199, 60)), "PNG"),
    "png-L": lambda: _save(Image.new("L", (7, 5), 77), "PNG"),
    "png-LA": lambda: _save(Image.new("LA", (7, 5), (77, 10)), "PNG"),
    "png-1": lambda: _save(Image.new("1", (7, 5), 1), "PNG"),
    "png-P": lambda: _save(Image.new("RGB", (7, 5), (1, 2, 3)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    "png-P-transparency": lambda: _save(Image.new("P", (7, 5), 3), "PNG", transparency=3),
    "png-I;16": lambda: _save(Image.new("I;16", (7, 5), 60000), "PNG"),
    "apng": lambda: _save(_frames("RGBA")[0], "PNG", save_all=True, append_images=_frames("RGBA")[1:]),
    "jpeg-RGB": lambda: _save(Image.new("RGB", (9, 8), (200, 10, 10)), "JPEG"),
    "jpeg-L": lambda: _save(Image.new("L", (9, 8), 10), "JPEG"),
    "jpeg-CMYK": lambda: _save(Image.new("CMYK", (9, 8), (0, 50, 100, 20)), "JPEG"),
    "jpeg-progressive": lambda: _save(Image.new("RGB", (33, 20), (1, 2, 3)), "JPEG", progressive=True),
    "webp-RGB": lambda: _save(Image.new("RGB", (9, 8), (3, 30, 90)), "WEBP"),
    "webp-RGBA": lambda: _save(Image.new("RGBA", (9, 8), (3, 30, 90, 5)), "WEBP", lossless=True),
    "webp-animated": lambda: _save(_frames("RGBA")[0], "WEBP", save_all=True, append_images=_frames("RGBA")[1:]),
    "gif-animated": lambda: _save(_frames("L")[0], "GIF", save_all=True, append_images=_frames("L")[1:]),
    "tiff-I;16": lambda: _save(Image.new("I;16", (7, 5), 1234), "TIFF"),
    "tiff-CMYK": lambda: _save(Image.new("CMYK", (7, 5), (1, 2, 3, 4)), "TIFF"),
    "tiff-F": lambda: _save(Image.new("F", (7, 5), 0.5), "TIFF"),
    "bmp-RGB": lambda: _save(Image.new("RGB", (7, 5), (1, 2, 3)), "BMP"),
    "ico": lambda: _save(Image.new("RGBA", (16, 16), (1, 2, 3, 4)), "ICO"),
    "bomb-png-100k": lambda: _png_declaring(100_000, 100_000, zlib.compress(bytes(64))),
    "bomb-png-12k": lambda: _png_declaring(12_000, 12_000, zlib.compress(bytes(64))),  # PIL's warning range
    "bomb-png-zlib": lambda: _zlib_bomb_png(8000),  # 190 MB inflated, under PIL's limits
    "png-short-data": lambda: _png_declaring(64, 64, zlib.compress(bytes(100))),  # valid CRCs, too few bytes
    "png-long-data": lambda: _png_declaring(4, 4, zlib.compress(bytes(1000))),
    "png-interlaced": lambda: _save(Image.new("RGB", (13, 11), (5, 6, 7)), "PNG", interlace=1),
    "bomb-gif-screen": lambda: _gif_screen(10_000, 10_000),
    "bomb-gif-huge": lambda: _gif_screen(65_535, 65_535),
    "empty": lambda: b"",
    "text": lambda: b"not an image at all",
}


@functools.cache
def image_bytes(kind: str) -> bytes:
    return IMAGE_MAKERS[kind]()


@dataclass(frozen=True)
class ImageCase:
    kind: str
    damage: Damage = Damage()

    def bytes(self) -> bytes:
        return self.damage.apply(image_bytes(self.kind))


image_cases = st.builds(ImageCase, kind=st.sampled_from(sorted(IMAGE_MAKERS)), damage=damages)
small_images = st.builds(ImageCase, kind=st.sampled_from([k for k in IMAGE_MAKERS if k != "bomb-png-zlib"]),
                         damage=damages)


# ---------------------------------------------------------------- tars


@dataclass(frozen=True)
class Member:
    """One tar member: a file of `data` (`declared`: the size its header says instead, None = the true size), or a
    symlink, hard link or directory (`target`: the link's target)."""
    name: str
    data: bytes = b""
    kind: str = "file"
    declared: int | None = None
    target: str = ""

    def __repr__(self) -> str:
        extra = f", declared={self.declared}" if self.declared is not None else ""
        extra += f", target={self.target!r}" if self.target else ""
        return f"Member({self.name!r}, {_short(self.data)}, {self.kind}{extra})"

    def block(self, fmt: int) -> bytes:
        info = tarfile.TarInfo(self.name)
        info.type = {"file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                     "dir": tarfile.DIRTYPE}[self.kind]
        info.linkname, info.mtime = self.target, 0
        data = self.data if self.kind == "file" else b""
        info.size = len(data) if self.declared is None else self.declared
        try:
            header = info.tobuf(fmt, "utf-8", "surrogateescape")
        except ValueError:  # a name or size the format cannot hold: the PAX form can
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        return header + data + bytes(-len(data) % tarfile.BLOCKSIZE)


@dataclass(frozen=True)
class TarCase:
    members: tuple[Member, ...]
    pax: bool = False
    end_marker: bool = True
    compress: bool = False
    damage: Damage = Damage()

    @property
    def suffix(self) -> str:
        return ".tar.gz" if self.compress else ".tar"

    def bytes(self) -> bytes:
        fmt = tarfile.PAX_FORMAT if self.pax else tarfile.GNU_FORMAT
        data = b"".join(m.block(fmt) for m in self.members)
        data += bytes(2 * tarfile.BLOCKSIZE) if self.end_marker else b""
        return self.damage.apply(gzip.compress(data, mtime=0) if self.compress else data)


KEYS = ("a", "b", "k0")
NAME_FORMS = ("{k}.{e}", "{k}.{e}", "{k}.{e}", "../{k}.{e}", "../../../{k}.{e}", "/abs/{k}.{e}", "/{k}.{e}",
              "{k}\x00x.{e}", "{k}.x\x00.{e}", ".{k}.{e}", "{k}..{e}", "{k}.", ".", "..", "./{k}.{e}",
              "dir/{k}.{e}", "\udcff\udcfe{k}.{e}", "{k}\udcc3.{e}", "{k}." + "x" * 120 + ".{e}",
              "{k}.{E}", "{k}.nbr.{e}")
EXTS = ("txt", "json", "jpg", "png", "webp", "jpeg", "gif", "npy", "nbr.npy")


@st.composite
def member_names(draw) -> str:
    form = draw(st.sampled_from(NAME_FORMS))
    ext = draw(st.sampled_from(EXTS))
    return form.format(k=draw(st.sampled_from(KEYS)), e=ext, E=ext.upper())


TEXTS = (b"a dog on a mat", b"", b"  \t ", "caf\u00e9 \u00e0 la cr\u00e8me".encode(), b"caf\xe9", b"\x00\x01\x02",
         b"\xef\xbb\xbfbom caption", "\U0001f600 emoji".encode())
JSONS = (b'{"label": 1}', b'{"label": "2"}', '{"label": "\u00b2"}'.encode(), b'{"label": -3}', b'{"label": 1e999}',
         b'{"label": null}', b'{"label": [1]}', b'{"label": true}', b"[1, 2]", b'"str"', b"{broken", b"",
         b'{"label": 99999999999999999999}', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000)


@st.composite
def member_data(draw, name: str) -> bytes:
    ext = name.rpartition(".")[2].lower()
    if ext == "txt":
        return draw(st.one_of(st.sampled_from(TEXTS), st.binary(max_size=40),
                              st.integers(1, 2_000_000).map(lambda n: b"w " * (n // 2))))
    if ext == "json":
        return draw(st.one_of(st.sampled_from(JSONS), st.binary(max_size=40)))
    return draw(small_images).bytes()


@st.composite
def members(draw) -> Member:
    name = draw(member_names())
    kind = draw(st.sampled_from(("file",) * 6 + ("symlink", "hardlink", "dir")))
    if kind != "file":
        return Member(name, kind=kind, target=draw(st.sampled_from(("/etc/passwd", "../../x", "a.txt", "a.jpg"))))
    data = draw(member_data(name))
    declared = draw(st.one_of(st.none(), st.none(), st.just(0), st.sampled_from((5 * GIB, 8**11 - 1, 1 << 40)),
                              st.integers(0, 4096)))
    return Member(name, data, declared=declared)


tar_cases = st.builds(TarCase, members=st.lists(members(), max_size=8).map(tuple), pax=st.booleans(),
                      end_marker=st.booleans() | st.just(True), compress=st.booleans(), damage=damages)


# ---------------------------------------------------------------- tables


HUGE = 3_000_000  # characters of a huge string cell


@dataclass(frozen=True)
class Huge:
    """A string cell of `HUGE` characters (a recipe, so the reproducer stays short)."""
    char: str = "x"

    def value(self) -> str:
        return (self.char + " ") * (HUGE // 2)


CELLS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12),
    st.sampled_from(("k.1", "a/b", "../../etc/passwd", "/etc/hostname", "img.png", " ", "\udcff", "7", "cat", "0",
                     "\u00b2", "\u0663", "99999999999999999999999", "[[[[[[[[")),
    st.binary(max_size=12), st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=3),
                                                                                     st.integers(), max_size=2),
    st.builds(Huge),
)
COLUMN_NAMES = ("key", "caption", "image", "label", "other", "")
RAW_LINES = (b"[" * 100_000 + b"]" * 100_000, b'{"key": "k", "caption": "c", "label": "\xc2\xb2"}',
             b'{"key": "k", "caption": "c", "label": 100000000000000000000000}', b"\xff\xfe", b"null", b"{}",
             b'"unterminated', b",,,,,,,,", b"\x00")


@dataclass(frozen=True)
class TableCase:
    fmt: str
    columns: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]
    image_col: str | None
    label_col: str | None
    classnames: tuple[str, ...] | None
    image_bytes: tuple[ImageCase, ...] = ()  # Parquet: an image column of these bytes instead
    lines: tuple[bytes, ...] = ()  # CSV, TSV, JSONL: raw lines added after the rows
    damage: Damage = Damage()

    def table(self):
        """The rows as an Arrow table, one type per column (Parquet): a column of mixed cells becomes strings."""
        import pyarrow as pa

        cols = {}
        for i, name in enumerate(self.columns):
            values = [_typed_cell(r[i]) if i < len(r) else None for r in self.rows]
            try:
                cols[name] = pa.array(values)
            except (pa.ArrowException, OverflowError, TypeError, ValueError):
                cols[name] = pa.array([None if v is None else repr(v) for v in values])
        if self.image_bytes:
            cols["image"] = pa.array([c.bytes() for c in self.image_bytes] + [None] * (len(self.rows) -
                                                                                 len(self.image_bytes)),
                                     pa.binary())[: len(self.rows)]
        return pa.table(cols) if cols else pa.table({"x": pa.array([], pa.int8())})

    def bytes(self) -> bytes:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            buf = io.BytesIO()
            pq.write_table(self.table(), buf)
            data = buf.getvalue()
        elif self.fmt == "jsonl":
            data = b"".join(_json_line(dict(zip(self.columns, map(_cell, r)))) for r in self.rows)
        else:
            sep = b"," if self.fmt == "csv" else b"\t"
            lines = [sep.join(c.encode("utf-8", "surrogateescape") for c in self.columns)]
            lines += [sep.join(_csv_cell(_cell(v)) for v in r) for r in self.rows]
            data = b"\n".join(lines) + b"\n"
        if self.fmt != "parquet":
            data += b"".join(line + b"\n" for line in self.lines)
        return self.damage.apply(data)


def _cell(value: object) -> object:
    return value.value() if isinstance(value, Huge) else value


def _typed_cell(value: object) -> object:
    """A cell as a Parquet column can hold it: a mapping as its JSON text (Parquet has no empty struct)."""
    return json.dumps(value) if isinstance(value, dict) else _cell(value)


def _json_line(obj: dict) -> bytes:
    try:
        return json.dumps(obj, default=repr).encode("utf-8", "surrogateescape") + b"\n"
    except (ValueError, TypeError, UnicodeEncodeError):
        return repr(obj).encode("utf-8", "surrogateescape") + b"\n"


def _csv_cell(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return ("" if value is None else str(value)).encode("utf-8", "surrogateescape")


@st.composite
def table_cases(draw) -> TableCase:
    fmt = draw(st.sampled_from(("parquet", "csv", "tsv", "jsonl")))
    columns = tuple(draw(st.lists(st.sampled_from(COLUMN_NAMES), min_size=0, max_size=5, unique=True)))
    width = st.integers(max(0, len(columns) - 1), len(columns) + 1) if fmt in ("csv", "tsv") else st.just(len(columns))
    rows = tuple(tuple(draw(st.lists(CELLS, min_size=w, max_size=w))) for w in draw(st.lists(width, max_size=6)))
    image_col = draw(st.sampled_from((None, None, "image", "missing_col")))
    label_col = draw(st.sampled_from((None, "label", "label", "missing_col")))
    classnames = draw(st.sampled_from((None, None, ("cat", "dog"), ("",)))) if label_col else None
    images = ()
    if fmt == "parquet" and image_col == "image" and draw(st.booleans()):
        images = tuple(draw(st.lists(small_images, max_size=len(rows))))
    lines = tuple(draw(st.lists(st.sampled_from(RAW_LINES), max_size=2))) if fmt != "parquet" else ()
    return TableCase(fmt, columns, rows, image_col, label_col, classnames, images, lines, draw(damages))


# ---------------------------------------------------------------- shard samples (the trainer's input)


K = 3  # neighbours per row in the fuzzed shards


def _nbr(ids, sims, dtype=NEIGHBOR_DTYPE) -> bytes:
    row = np.zeros(len(ids), dtype=dtype)
    row["id"], row["sim"] = ids, sims
    return npy_bytes(row)


def _pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"id": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _npy_declaring(shape: tuple[int, ...], dtype=NEIGHBOR_DTYPE) -> bytes:
    """An .npy header declaring `shape` over 24 bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(24)


NBR_ROWS = {
    "good": lambda: _nbr([1, 2, 3], [0.9, 0.5, 0.1]),
    "invalid-row": lambda: _nbr([-1, -1, -1], [np.nan] * 3),  # a caption whose embedding was invalid
    "short": lambda: _nbr([1, 2], [0.9, 0.5]),
    "long": lambda: _nbr([1, 2, 3, 4], [0.9, 0.5, 0.1, 0.0]),
    "2-d": lambda: npy_bytes(np.zeros((1, K), NEIGHBOR_DTYPE)),
    "float32": lambda: npy_bytes(np.zeros(K, np.float32)),
    "other-fields": lambda: npy_bytes(np.zeros(K, [("a", "<i8"), ("b", "<f4")])),
    "big-endian": lambda: _nbr([1, 2, 3], [0.9, 0.5, 0.1], np.dtype([("id", ">i8"), ("sim", ">f4")])),
    "ids-out-of-range": lambda: _nbr([2**62, -7, 3], [0.9, 0.5, 0.1]),
    "sims-nan": lambda: _nbr([1, 2, 3], [np.nan, 0.5, 0.1]),
    "sims-inf": lambda: _nbr([1, 2, 3], [np.inf, -np.inf, 0.1]),
    "sims-over-1": lambda: _nbr([1, 2, 3], [7.0, 0.5, -3.0]),
    "pickled": _pickled_npy,
    "huge-shape": lambda: _npy_declaring((10**12,)),
    "not-npy": lambda: b"\x93NUMPY garbage",
    "empty": lambda: b"",
}
EMB_ROWS = {
    "good": lambda: npy_bytes(np.full(8, 0.35, np.float16)),
    "nan": lambda: npy_bytes(np.full(8, np.nan, np.float16)),
    "other-dim": lambda: npy_bytes(np.full(5, 0.4, np.float16)),
    "2-d": lambda: npy_bytes(np.zeros((2, 8), np.float16)),
    "huge-shape": lambda: _npy_declaring((10**12,), np.float16),
    "strings": lambda: npy_bytes(np.array(["a", "b"])),
    "pickled": _pickled_npy,
    "not-npy": lambda: b"nope",
}
METAS = {
    "good": lambda: json.dumps({"caption_id": 5, "group": 1, "label": 2}).encode(),
    "no-label": lambda: json.dumps({"caption_id": 5, "group": 1}).encode(),
    "id-string": lambda: b'{"caption_id": "5", "group": 1, "label": 2}',
    "id-word": lambda: b'{"caption_id": "five", "group": 1, "label": 2}',
    "id-float": lambda: b'{"caption_id": 5.5, "group": 1, "label": 2}',
    "id-inf": lambda: b'{"caption_id": 1e999, "group": 1, "label": 2}',
    "id-nan": lambda: b'{"caption_id": NaN, "group": 1, "label": 2}',
    "id-huge": lambda: b'{"caption_id": 100000000000000000000000000000, "group": 1, "label": 2}',
    "id-negative": lambda: b'{"caption_id": -4, "group": 1, "label": 2}',
    "id-null": lambda: b'{"caption_id": null, "group": 1, "label": 2}',
    "id-list": lambda: b'{"caption_id": [5], "group": 1, "label": 2}',
    "label-huge": lambda: b'{"caption_id": 5, "group": 1, "label": 1e300}',
    "label-string": lambda: b'{"caption_id": 5, "group": 1, "label": "cat"}',
    "group-list": lambda: b'{"caption_id": 5, "group": [1], "label": 2}',
    "list": lambda: b"[5, 1]",
    "not-json": lambda: b"{caption_id: 5",
    "not-utf8": lambda: b'{"caption_id": 5, "x": "\xff"}',
    "deep": lambda: b"[" * 100_000 + b"]" * 100_000,
}


@dataclass(frozen=True)
class SampleCase:
    """One shard sample: its key form and each member's variant (None: the member is left out)."""
    key: str
    image: ImageCase | None
    meta: str | None
    nbr: str | None
    emb: str | None
    extra: tuple[Member, ...] = ()

    def members(self) -> list[Member]:
        out = [Member(f"{self.key}.png" if self.image.kind.startswith(("png", "apng")) else f"{self.key}.jpg",
                      self.image.bytes())] if self.image else []
        out += [Member(f"{self.key}.txt", b"a caption")]
        out += [Member(f"{self.key}.json", METAS[self.meta]())] if self.meta else []
        out += [Member(f"{self.key}.nbr.npy", NBR_ROWS[self.nbr]())] if self.nbr else []
        out += [Member(f"{self.key}.emb.npy", EMB_ROWS[self.emb]())] if self.emb else []
        return out + list(self.extra)


def _maybe(keys) -> st.SearchStrategy:
    return st.one_of(st.just("good"), st.sampled_from(sorted(keys)), st.none())


SAMPLE_KEYS = ("s0", "s1", "../s2", "/abs/s3", "d/s4", "s5\udcff", "s0")
random_samples = st.builds(
    SampleCase,
    key=st.sampled_from(SAMPLE_KEYS),
    image=st.one_of(st.just(ImageCase("png-RGB")), small_images, st.none()),
    meta=_maybe(METAS), nbr=_maybe(NBR_ROWS), emb=_maybe(EMB_ROWS),
    extra=st.lists(members(), max_size=2).map(tuple),
)
# a sample whose members are all good but one: what a reader must catch among good neighbours
one_fault_samples = st.one_of(
    st.builds(SampleCase, key=st.sampled_from(SAMPLE_KEYS), image=small_images, meta=st.just("good"),
              nbr=st.just("good"), emb=st.just("good")),
    *(st.builds(SampleCase, key=st.sampled_from(("s6", "s7", "s9")), image=st.just(ImageCase("png-RGB")),
                **{field: st.sampled_from(sorted(options)),
                   **{f: st.just("good") for f in ("meta", "nbr", "emb") if f != field}})
      for field, options in (("meta", METAS), ("nbr", NBR_ROWS), ("emb", EMB_ROWS))),
)
sample_cases = st.one_of(random_samples, one_fault_samples, st.just(SampleCase("s8", ImageCase("png-RGB"), "good",
                                                                                "good", "good")))


@dataclass(frozen=True)
class ShardCase:
    samples: tuple[SampleCase, ...]
    pax: bool = True
    end_marker: bool = True
    damage: Damage = Damage()

    def tar(self) -> TarCase:
        return TarCase(tuple(m for s in self.samples for m in s.members()), self.pax, self.end_marker, False,
                       self.damage)


shard_cases = st.builds(ShardCase, samples=st.lists(sample_cases, min_size=1, max_size=4).map(tuple),
                        pax=st.booleans(), end_marker=st.booleans() | st.just(True), damage=damages)
