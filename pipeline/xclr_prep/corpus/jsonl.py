"""JSON Lines: one object per line with the keys ``--key-col``, ``--caption-col``, optional ``--image-col`` (a
path, relative to the file's folder) and ``--label-col``. A line that is not UTF-8 or not a JSON object is a row
with its skip reason; blank lines are no rows."""

from __future__ import annotations

import json
from collections.abc import Iterator

from xclr_prep.corpus.reader import JSON_ERRORS, CorpusSpec, RawRow, Reader
from xclr_schemas import storage


class JsonlReader(Reader):
    name = "jsonl"
    suffixes = (".jsonl",)

    def columns(self, path: str) -> list[str] | None:
        """The keys of the first object; None when the first line is not one (the scan counts it)."""
        with storage.open_input(path) as f:
            try:
                first = json.loads(next((line for line in f if line.strip()), b"{}"))
            except JSON_ERRORS:
                return None
        return list(first) if isinstance(first, dict) else None

    def rows(self, path: str, spec: CorpusSpec) -> Iterator[RawRow]:
        image_dir = storage.parent(path)
        with storage.open_input(path) as f:
            for line in f:
                if line.strip():
                    yield _row(line, spec, image_dir)


def _row(line: bytes, spec: CorpusSpec, image_dir: str) -> RawRow:
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return RawRow(error="line_not_utf8")
    except JSON_ERRORS:
        return RawRow(error="line_invalid")
    if not isinstance(obj, dict):
        return RawRow(error="line_invalid")
    image = obj.get(spec.image_col) if spec.image_col else None
    return RawRow(
        key=obj.get(spec.key_col),
        caption=obj.get(spec.caption_col),
        label=obj.get(spec.label_col) if spec.label_col else None,
        image_source=storage.join(image_dir, image) if isinstance(image, str) else "",
    )
