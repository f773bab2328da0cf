"""Tables: Parquet, CSV and TSV. One row per table row; columns ``--key-col``, ``--caption-col``, optional
``--image-col`` and ``--label-col``. An image column holds a path, relative to the table's folder, or (Parquet
only) the image's bytes, which are not read with the rows: a bytes image is located by its row and copied once into
a blob file of the embed part that uses it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from xclr_prep.corpus.reader import CorpusSpec, Location, RawRow, Reader
from xclr_schemas import storage
from xclr_schemas.atomic import write_atomic

BATCH_ROWS = 65_536


class TableReader(Reader):
    """The rows of a table read in record batches (`batches`); a bytes image column (`bytes_column`) is left out
    of them and only its row numbers are recorded."""

    def batches(self, f: BinaryIO, columns: list[str], spec: CorpusSpec) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def bytes_column(self, path: str, spec: CorpusSpec) -> bool:
        return False

    def rows(self, path: str, spec: CorpusSpec) -> Iterator[RawRow]:
        columns = spec.table_columns()
        image_is_bytes = self.bytes_column(path, spec)
        if image_is_bytes:
            columns.remove(spec.image_col)
        image_dir = storage.parent(path)
        row_index = 0
        with storage.open_input(path) as f:
            for batch in self.batches(f, columns, spec):
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
                        row.image_source, row.image_member, row.image_row = path, spec.image_col, row_index + i
                    elif images[i]:
                        row.image_source = storage.join(image_dir, images[i])
                    yield row
                row_index += n


class ParquetReader(TableReader):
    name = "parquet"
    suffixes = (".parquet",)
    images = "column"

    def columns(self, path: str) -> list[str]:
        with storage.open_input(path) as f:
            return pq.read_schema(f).names

    def bytes_column(self, path: str, spec: CorpusSpec) -> bool:
        if not spec.image_col:
            return False
        with storage.open_input(path) as f:
            image_type = pq.read_schema(f).field(spec.image_col).type
        return pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)

    def batches(self, f: BinaryIO, columns: list[str], spec: CorpusSpec) -> Iterator[pa.RecordBatch]:
        yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=columns)

    def stage_name(self, digest: str, part: int) -> str:
        return f"p{part:05d}-{digest}.blob"  # the part's rows only

    def locate(self, source: str, refs: list[tuple[str, int]], samples: list[int],
               stage_path: Path) -> list[Location]:
        column = refs[0][0]
        wanted = {row: s for (_, row), s in zip(refs, samples)}
        found = []

        def copy(tmp: Path) -> None:
            offset, row = 0, 0
            with open(tmp, "wb") as out, storage.open_input(source) as src:
                for batch in pq.ParquetFile(src).iter_batches(batch_size=1024, columns=[column]):
                    for value in batch.column(0).to_pylist():
                        if row in wanted and value:
                            out.write(value)
                            found.append((wanted[row], str(stage_path), offset, len(value)))
                            offset += len(value)
                        row += 1

        write_atomic(stage_path, copy)
        return found


class DelimitedReader(TableReader):
    """CSV (`delimiter` ",") or TSV ("\\t"). Key and caption are read as raw bytes, so that one row with bytes
    that are not UTF-8 is skipped, not the file."""

    def __init__(self, name: str, delimiter: str) -> None:
        self.name, self.suffixes, self.delimiter = name, (f".{name}",), delimiter

    def _parse(self) -> pacsv.ParseOptions:
        return pacsv.ParseOptions(delimiter=self.delimiter)

    def columns(self, path: str) -> list[str]:
        with storage.open_input(path) as f:
            return pacsv.open_csv(f, parse_options=self._parse()).schema.names

    def batches(self, f: BinaryIO, columns: list[str], spec: CorpusSpec) -> Iterator[pa.RecordBatch]:
        types = {c: pa.binary() for c in (spec.key_col, spec.caption_col)}
        yield from pacsv.open_csv(f, parse_options=self._parse(),
                                  convert_options=pacsv.ConvertOptions(include_columns=columns, column_types=types))
