"""img2dataset-style WebDataset tars (``.tar``, ``.tar.gz``, ``.tgz``). Members are grouped by key = member name
up to its *last* dot; ``KEY.txt`` is the caption, ``KEY.jpg|jpeg|png|webp`` the image, ``KEY.json`` optional
metadata (the label is read from its field ``--label-col``). One row per key; a second caption of a key is a
duplicate sample. A ``KEY.txt`` or ``KEY.json`` over MAX_TEXT_BYTES is not read (a compressed tar could make it
gigabytes from a few kB): its row is skipped as ``member_too_large``. Images are members: located at their data
offset in the tar (a compressed tar is decompressed once into the stage directory; headers are read, data is not).
"""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

from xclr_prep.corpus.reader import JSON_ERRORS, CorpusSpec, Location, RawRow, Reader
from xclr_schemas import storage
from xclr_schemas.atomic import write_atomic

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
COMPRESSED = (".gz", ".tgz")
MAX_TEXT_BYTES = 1 << 20


class TarReader(Reader):
    name = "tar"
    suffixes = (".tar.gz", ".tgz", ".tar")
    images = "member"

    def rows(self, path: str, spec: CorpusSpec) -> Iterator[RawRow]:
        # Image members are skipped, not read: in a plain tar, check they lie inside the file. (A compressed tar
        # reads through them and raises EOFError when cut short.)
        size = None if path.lower().endswith(COMPRESSED) else storage.file_size(path)
        rows: dict[str, RawRow] = {}
        extra: list[RawRow] = []  # a second member of the same key and kind: a duplicate sample
        with storage.open_input(path) as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            for member in tar:
                key, dot, ext = member.name.rpartition(".")
                ext = ext.lower()
                if not member.isfile() or not dot or ext not in IMAGE_EXTS + ("txt", "json"):
                    continue
                if size is not None and member.offset_data + member.size > size:
                    raise tarfile.ReadError(f"member {member.name} runs past the end of the file (truncated)")
                row = rows.setdefault(key, RawRow(key=key, image_source=path))
                if ext in ("txt", "json") and member.size > MAX_TEXT_BYTES:
                    row.error = "member_too_large"
                elif ext == "txt":
                    data = tar.extractfile(member).read()
                    if row.caption is not None:
                        extra.append(RawRow(key=key, caption=data))
                    else:
                        row.caption = data
                elif ext == "json":
                    _read_label(row, tar.extractfile(member).read(), spec)
                elif not row.image_member:
                    row.image_member = member.name
            # tarfile ends quietly at a header cut short; a complete archive ends with a zero block.
            tar.fileobj.seek(tar.offset)
            if tar.fileobj.read(512) != bytes(512):
                raise tarfile.ReadError(f"no end-of-archive marker after {len(rows)} samples (truncated)")
        yield from rows.values()
        yield from extra

    def stage_name(self, digest: str, part: int) -> str:
        return f"{digest}.tar"  # one decompressed copy, for every part that uses it

    def locate(self, source: str, refs: list[tuple[str, int]], samples: list[int],
               stage_path: Path) -> list[Location]:
        path = source
        if source.lower().endswith(COMPRESSED):
            if not stage_path.exists():  # staged by an earlier part otherwise
                write_atomic(stage_path, lambda tmp: _decompress(source, tmp))
            path = str(stage_path)
        where: dict[str, tuple[int, int]] = {}
        try:
            size = storage.file_size(path)
            with storage.open_input(path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
                for m in tar:
                    if m.isfile() and m.offset_data + m.size <= size:
                        where.setdefault(m.name, (m.offset_data, m.size))
        except (FileNotFoundError, tarfile.TarError):
            pass  # a tar gone, or damaged: members read before the damage are located, the rest count as missing
        return [(s, path, *where[m]) for s, (m, _) in zip(samples, refs) if m in where]


def _read_label(row: RawRow, meta: bytes, spec: CorpusSpec) -> None:
    if spec.label_col:
        try:
            row.label = json.loads(meta).get(spec.label_col)
        except (*JSON_ERRORS, AttributeError):
            row.error = "json_invalid"


def _decompress(path: str, tmp: Path) -> None:
    with storage.open_input(path) as raw, gzip.open(raw, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
