"""Caption corpora: finding the input files and reading them as raw rows, one `Reader` per format.

Formats (docs/design.md, Data contracts), told from the file name unless ``--format`` says otherwise:

- ``tar``: img2dataset-style WebDataset tars (`xclr_prep.corpus.tar`);
- ``parquet``, ``csv``, ``tsv``: tables (`xclr_prep.corpus.tables`);
- ``jsonl``: JSON Lines (`xclr_prep.corpus.jsonl`).

A reader yields `RawRow`s without judging them; `xclr_prep.scan` validates. Reading an image's bytes is left
to the graph stage: the row records only where the image is, and the reader that made the reference locates it
(`xclr_prep.images`). A new format is one `Reader` subclass in its own module, listed in `READERS`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from xclr_prep.corpus.jsonl import JsonlReader
from xclr_prep.corpus.reader import CorpusSpec, InputFile, Location, RawRow, Reader
from xclr_prep.corpus.tables import DelimitedReader, ParquetReader
from xclr_prep.corpus.tar import TarReader
from xclr_prep.errors import PrepError
from xclr_schemas import storage

__all__ = ["CorpusSpec", "FORMATS", "IMAGE_READERS", "InputFile", "Location", "READERS", "RawRow", "Reader",
           "check_columns", "find_inputs", "read_rows"]

READERS: dict[str, Reader] = {r.name: r for r in (
    TarReader(), ParquetReader(), DelimitedReader("csv", ","), DelimitedReader("tsv", "\t"), JsonlReader())}
FORMATS = tuple(READERS)
# The reader that locates each kind of image reference (a sample records the reference, not its corpus format).
IMAGE_READERS: dict[str, Reader] = {r.images: r for r in READERS.values() if r.images}
if len(IMAGE_READERS) != sum(1 for r in READERS.values() if r.images):
    raise TypeError("two readers make the same kind of image reference: a sample could not tell which locates it")


def format_of(path: str) -> str | None:
    """The format whose suffix `path` has (case-insensitive), None if none does."""
    name = path.lower()
    return next((r.name for r in READERS.values() if name.endswith(r.suffixes)), None)


def find_inputs(patterns: list[str], fmt: str | None = None) -> list[InputFile]:
    """Expand files, directories (recursively, files of known formats) and globs, local or URLs (see
    `xclr_schemas.storage`), in argument order, each expansion sorted, each file once. Raises PrepError when a
    pattern matches nothing."""
    files: list[InputFile] = []
    seen: set[str] = set()
    for pattern in patterns:
        matches = _expand(pattern)
        if not matches:
            raise PrepError(f"no input files match {pattern!r}")
        for path in matches:
            real = path if storage.is_url(path) else os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            file_format = fmt or format_of(path)
            if file_format is None:
                raise PrepError(f"cannot tell the format of {path}; pass --format {'|'.join(FORMATS)}")
            files.append(InputFile(real, file_format))
    return files


def _expand(pattern: str) -> list[str]:
    if storage.is_url(pattern):
        matches = storage.find_files(pattern)
        return [m for m in matches if format_of(m)] if storage.is_dir(pattern) else matches
    if os.path.isdir(pattern):
        return sorted(str(p) for p in Path(pattern).rglob("*") if p.is_file() and format_of(str(p)))
    if os.path.exists(pattern):
        return [pattern]
    return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))


def check_columns(file: InputFile, spec: CorpusSpec) -> None:
    """Raise PrepError naming the first required column that a table file lacks, before any work starts.

    Tars are not checked, nor files whose header cannot be read: the scan skips and counts those.
    """
    try:
        have = READERS[file.format].columns(file.path)
    except (OSError, ValueError, TypeError, pa.ArrowException):
        return
    if have is None:
        return
    for col in spec.table_columns():
        if col not in have:
            raise PrepError(f"{file.path} has no column {col!r} (columns: {', '.join(map(repr, have))})")


def read_rows(file: InputFile, spec: CorpusSpec) -> Iterator[RawRow]:
    """The rows of `file` (`Reader.rows`)."""
    return READERS[file.format].rows(file.path, spec)

