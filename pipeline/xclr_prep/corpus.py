"""Caption corpora: finding the input files and reading them as raw rows.

Formats (docs/design.md, Data contracts), told from the file name unless ``--format`` says otherwise:

- ``tar`` (``.tar``, ``.tar.gz``, ``.tgz``): img2dataset-style WebDataset tars. Members are grouped by key =
  member name up to its *last* dot; ``KEY.txt`` is the caption, ``KEY.jpg|jpeg|png|webp`` the image,
  ``KEY.json`` optional metadata (the label is read from its field ``--label-col``). One row per key.
- ``parquet``, ``csv``, ``tsv``, ``jsonl``: one row per table row; columns ``--key-col``, ``--caption-col``,
  optional ``--image-col`` (a path, relative to the table's folder, or the image bytes) and ``--label-col``.

A reader yields `RawRow`s without judging them; `xclr_prep.scan` validates. Reading an image's bytes is left
to the graph stage: the row records only where the image is.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from xclr_prep.errors import PrepError
from xclr_schemas import storage
from xclr_schemas.options import Checked, option

FORMATS = ("tar", "parquet", "csv", "tsv", "jsonl")
_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class CorpusSpec(Checked):
    """How to read captions from a corpus (options of `xclr-prep embed`, `xclr_schemas.options`).

    Class-label mode: when `classnames` is set, the caption of a row is ``template.format(classnames[label])``
    (the label may be a class index or a class name); `caption_col` is then not read.
    """
    error = PrepError

    key_col: str = option("key", "Key column (tables; a tar sample's key is its member names' stem).")
    caption_col: str = option("caption", "Caption column (tables; a tar sample's caption is KEY.txt).")
    image_col: str | None = option(None, "Column with an image path or the image bytes.")
    label_col: str | None = option(None, "Label column (tars: field of KEY.json).")
    classnames: tuple[str, ...] | None = None
    template: str = option("a photo of a {}", "Caption template for class-label mode.")

    def check(self) -> None:
        if self.classnames is not None and not self.label_col:
            raise PrepError("--classnames needs --label-col")
        if "{}" not in self.template:
            raise PrepError("--template must contain {}")

    @property
    def class_label_mode(self) -> bool:
        return self.classnames is not None


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str


@dataclass(slots=True)
class RawRow:
    """One input row as read. `error` is a skip reason the reader already knows (e.g. an unparseable line)."""

    key: object = None
    caption: object = None
    label: object = None
    image_source: str = ""
    image_member: str = ""
    image_row: int = -1
    error: str | None = None


def _format_of(path: str) -> str | None:
    name = path.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    return _SUFFIXES.get(os.path.splitext(name)[1])


def find_inputs(patterns: list[str], fmt: str | None = None) -> list[InputFile]:
    """Expand files, directories (recursively, files of known formats) and globs, local or URLs (see
    `xclr_schemas.storage`), in argument order, each expansion sorted, each file once. Raises PrepError when a
    pattern matches nothing."""
    files: list[InputFile] = []
    seen: set[str] = set()
    for pattern in patterns:
        if storage.is_url(pattern):
            matches = storage.find_files(pattern)
            if storage.is_dir(pattern):
                matches = [m for m in matches if _format_of(m)]
        elif os.path.isdir(pattern):
            matches = sorted(str(p) for p in Path(pattern).rglob("*") if p.is_file() and _format_of(str(p)))
        elif os.path.exists(pattern):
            matches = [pattern]
        else:
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not matches:
            raise PrepError(f"no input files match {pattern!r}")
        for path in matches:
            real = path if storage.is_url(path) else os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            file_format = fmt or _format_of(path)
            if file_format is None:
                raise PrepError(f"cannot tell the format of {path}; pass --format {'|'.join(FORMATS)}")
            files.append(InputFile(real, file_format))
    return files


def _table_columns(spec: CorpusSpec) -> list[str]:
    cols = [spec.key_col] + ([] if spec.class_label_mode else [spec.caption_col])
    return cols + [c for c in (spec.image_col, spec.label_col) if c]


def check_columns(file: InputFile, spec: CorpusSpec) -> None:
    """Raise PrepError naming the first required column that a table file lacks, before any work starts.

    Tars are not checked, nor files whose header cannot be read: the scan skips and counts those.
    """
    if file.format == "tar":
        return
    try:
        if file.format == "parquet":
            with storage.open_input(file.path) as f:
                have = pq.read_schema(f).names
        elif file.format == "jsonl":
            with storage.open_input(file.path) as f:
                have = list(json.loads(next((line for line in f if line.strip()), b"{}")))
        else:
            with storage.open_input(file.path) as f:
                have = pacsv.open_csv(f, parse_options=_csv_parse(file.format)).schema.names
    except (OSError, ValueError, TypeError, pa.ArrowException):
        return
    for col in _table_columns(spec):
        if col not in have:
            raise PrepError(f"{file.path} has no column {col!r} (columns: {', '.join(have)})")


def read_rows(file: InputFile, spec: CorpusSpec) -> Iterator[RawRow]:
    """Yield the rows of `file`. Raises OSError, tarfile.TarError, ValueError or ArrowException when the file is
    unreadable or truncated; the caller then treats the whole file as skipped."""
    if file.format == "tar":
        return _read_tar(file.path, spec)
    if file.format == "jsonl":
        return _read_jsonl(file.path, spec)
    return _read_arrow(file, spec)


def _read_tar(path: str, spec: CorpusSpec) -> Iterator[RawRow]:
    # Image members are skipped, not read: in a plain tar, check they lie inside the file. (A compressed tar
    # reads through them and raises EOFError when cut short.)
    size = None if path.lower().endswith((".gz", ".tgz")) else storage.file_size(path)
    rows: dict[str, RawRow] = {}
    extra: list[RawRow] = []  # a second member of the same key and kind: a duplicate sample
    with storage.open_input(path) as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, dot, ext = member.name.rpartition(".")
            ext = ext.lower()
            if not dot or ext not in IMAGE_EXTS + ("txt", "json"):
                continue
            if size is not None and member.offset_data + member.size > size:
                raise tarfile.ReadError(f"member {member.name} runs past the end of the file (truncated)")
            row = rows.setdefault(key, RawRow(key=key, image_source=path))
            if ext == "txt":
                data = tar.extractfile(member).read()
                if row.caption is not None:
                    extra.append(RawRow(key=key, caption=data))
                else:
                    row.caption = data
            elif ext == "json":
                meta = tar.extractfile(member).read()
                if spec.label_col:
                    try:
                        row.label = json.loads(meta).get(spec.label_col)
                    except (ValueError, AttributeError):
                        row.error = "json_invalid"
            elif not row.image_member:
                row.image_member = member.name
        # tarfile ends quietly at a header cut short; a complete archive ends with a zero block.
        tar.fileobj.seek(tar.offset)
        if tar.fileobj.read(512) != bytes(512):
            raise tarfile.ReadError(f"no end-of-archive marker after {len(rows)} samples (truncated)")
    yield from rows.values()
    yield from extra


def _read_jsonl(path: str, spec: CorpusSpec) -> Iterator[RawRow]:
    image_dir = storage.parent(path)
    with storage.open_input(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield RawRow(error="line_not_utf8")
                continue
            except ValueError:
                yield RawRow(error="line_invalid")
                continue
            if not isinstance(obj, dict):
                yield RawRow(error="line_invalid")
                continue
            image = obj.get(spec.image_col) if spec.image_col else None
            yield RawRow(
                key=obj.get(spec.key_col),
                caption=obj.get(spec.caption_col),
                label=obj.get(spec.label_col) if spec.label_col else None,
                image_source=storage.join(image_dir, image) if isinstance(image, str) else "",
            )


def _csv_parse(fmt: str) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")


def _arrow_batches(file: InputFile, columns: list[str], spec: CorpusSpec) -> Iterator[pa.RecordBatch]:
    with storage.open_input(file.path) as f:
        if file.format == "parquet":
            yield from pq.ParquetFile(f).iter_batches(batch_size=_BATCH_ROWS, columns=columns)
            return
        # Key and caption as raw bytes, so that one row with bytes that are not UTF-8 is skipped, not the file.
        types = {c: pa.binary() for c in (spec.key_col, spec.caption_col)}
        yield from pacsv.open_csv(
            f,
            parse_options=_csv_parse(file.format),
            convert_options=pacsv.ConvertOptions(include_columns=columns, column_types=types),
        )


def _read_arrow(file: InputFile, spec: CorpusSpec) -> Iterator[RawRow]:
    """Parquet, CSV and TSV. A binary image column is not read (only its position is recorded)."""
    columns = _table_columns(spec)
    image_is_bytes = False
    if spec.image_col and file.format == "parquet":
        with storage.open_input(file.path) as f:
            image_type = pq.read_schema(f).field(spec.image_col).type
        image_is_bytes = pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)
        if image_is_bytes:
            columns.remove(spec.image_col)
    image_dir = storage.parent(file.path)
    row_index = 0
    for batch in _arrow_batches(file, columns, spec):
        n = batch.num_rows
        keys = batch.column(spec.key_col).to_pylist()
        captions = [None] * n if spec.class_label_mode else batch.column(spec.caption_col).to_pylist()
        labels = batch.column(spec.label_col).to_pylist() if spec.label_col else [None] * n
        images = (batch.column(spec.image_col).to_pylist() if spec.image_col and not image_is_bytes
                  else [None] * n)
        for i in range(n):
            key = keys[i]
            row = RawRow(key=key if isinstance(key, (str, bytes)) or key is None else str(key),
                         caption=captions[i], label=labels[i])
            if image_is_bytes:
                row.image_source, row.image_member, row.image_row = file.path, spec.image_col, row_index + i
            elif images[i]:
                row.image_source = storage.join(image_dir, images[i])
            yield row
        row_index += n
