"""Scan: the first pass over one input file. Validates rows, normalises captions, writes scan parts.

Output under ``OUT/scan/`` (intermediate; deleted once the embed directory is complete):

    fNNNNN-CCCC.parquet   SCAN_SCHEMA, at most `part_size` valid rows of input file NNNNN, in input order
    fNNNNN.json           done marker, written last: parts, rows read, skips by reason, truncations

Skip reasons (a skipped row is counted, never written): key_missing, key_not_utf8, key_has_dot, key_has_slash,
caption_missing, caption_not_utf8, caption_empty, caption_too_long (only with ``too_long="skip"``),
label_invalid, json_invalid, line_invalid, line_not_utf8, member_too_large (a tar's KEY.txt or KEY.json over
`xclr_prep.corpus.tar.MAX_TEXT_BYTES`). A file that cannot be read to its end (unreadable,
truncated) is skipped whole: its marker records the error and no parts, so no row of it is half-used.

A caption is too long when its token count (special tokens included) exceeds the model's max_seq_length; with
``too_long="truncate"`` it is kept, the model truncates it, and it is counted as truncated.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclr_prep.captions import digest, normalise
from xclr_prep.corpus import CorpusSpec, InputFile, RawRow, read_rows
from xclr_schemas.atomic import write_atomic, write_json_atomic
from xclr_schemas.names import SCAN

SCAN_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption", pa.string()),
        ("caption_digest", pa.binary(16)),
        ("key_digest", pa.binary(16)),
        ("image_source", pa.string()),
        ("image_member", pa.string()),
        ("image_row", pa.int64()),
        ("label", pa.int64()),
    ]
)
TOO_LONG_POLICIES = ("truncate", "skip")
_SPECIAL_TOKENS = 4  # upper bound on the special tokens a tokenizer adds ([CLS] and [SEP] for BERT)
_READ_ERRORS = (OSError, EOFError, tarfile.TarError, ValueError, pa.ArrowException)


def scan_marker(out: Path, file_index: int) -> Path:
    return out / SCAN / f"f{file_index:05d}.json"


def _label_index(value: object, classnames: tuple[str, ...] | None) -> int | None:
    """Class index of a raw label (an index, or a class name when classnames are given), None if invalid."""
    if isinstance(value, str) and classnames is not None and value in classnames:
        return classnames.index(value)
    if isinstance(value, str) and value.strip().isdecimal():  # what int() reads ("²" is a digit, not decimal)
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:  # labels are int64
        return None
    return value if classnames is None or value < len(classnames) else None


def _utf8(value: object) -> str | None:
    """`value` (bytes, str or another scalar) as a str that is valid UTF-8, or None: bytes that are not UTF-8, or
    a str holding lone surrogates (JSON's "\\ud800" escapes), which no file can store."""
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        text.encode("utf-8")
    except UnicodeError:
        return None
    return text


def validate(raw: RawRow, spec: CorpusSpec) -> tuple[str | None, tuple[str, str, int] | None]:
    """(skip reason, None) for a bad row, else (None, (key, normalised caption, label or -1))."""
    if raw.error:
        return raw.error, None
    if raw.key is None:
        return "key_missing", None
    key = _utf8(raw.key)
    if key is None:
        return "key_not_utf8", None
    if not key.strip():
        return "key_missing", None
    if "." in key:
        return "key_has_dot", None
    if "/" in key:
        return "key_has_slash", None
    label = -1
    if spec.label_col:
        index = _label_index(raw.label, spec.classnames)
        if index is None and (spec.class_label_mode or raw.label is not None):
            return "label_invalid", None
        label = -1 if index is None else index
    if spec.class_label_mode:
        caption = spec.template.format(spec.classnames[label])
    else:
        caption = raw.caption
        if caption is None:
            return "caption_missing", None
        caption = _utf8(caption)
        if caption is None:
            return "caption_not_utf8", None
    caption = normalise(str(caption))
    if not caption:
        return "caption_empty", None
    return None, (key, caption, label)


def scan_file(
    file_index: int,
    file: InputFile,
    spec: CorpusSpec,
    out: Path,
    part_size: int,
    count_tokens: Callable[[list[str]], list[int]],
    max_tokens: int,
    too_long: str,
) -> dict:
    """Scan input file `file_index` into parts under ``out/scan`` and write its done marker; return the marker.

    `count_tokens` returns each text's token count, special tokens included. Only captions that could exceed
    `max_tokens` are tokenised: a token covers at least one UTF-8 byte (WordPiece, byte-level BPE and
    SentencePiece with byte fallback alike), so a caption of b bytes has at most b + _SPECIAL_TOKENS tokens.
    """
    scan = _FileScan(file_index, out, count_tokens, max_tokens, too_long)
    rows_in, file_error = 0, None
    buffer: list[tuple[RawRow, tuple[str, str, int]]] = []
    try:
        for raw in _readable_rows(file, spec):
            rows_in += 1
            reason, row = validate(raw, spec)
            if reason:
                scan.skipped[reason] += 1
                continue
            buffer.append((raw, row))
            if len(buffer) >= part_size:
                scan.flush(buffer)
                buffer = []
        scan.flush(buffer)
    except _Unreadable as e:
        file_error = str(e)
        for part in scan.parts:
            (out / SCAN / part["name"]).unlink(missing_ok=True)
        scan, rows_in = _FileScan(file_index, out, count_tokens, max_tokens, too_long), 0
    marker = {
        "file_index": file_index,
        "path": file.path,
        "format": file.format,
        "parts": scan.parts,
        "rows_in": rows_in,
        "skipped": dict(sorted(scan.skipped.items())),
        "truncated": scan.truncated,
        "file_error": file_error,
    }
    write_json_atomic(scan_marker(out, file_index), marker)
    return marker


class _Unreadable(Exception):
    """The input file could not be read to its end (the message: the read error's type and first line)."""


def _readable_rows(file: InputFile, spec: CorpusSpec) -> Iterator[RawRow]:
    """The rows of `file`; a read error becomes _Unreadable. Errors of the scan's own writes (a full disk) pass
    through the loop over these rows untouched: they are not the input's fault."""
    try:
        yield from read_rows(file, spec)
    except _READ_ERRORS as e:
        raise _Unreadable(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}") from e


@dataclass
class _FileScan:
    """One file's scan so far: the parts written, skips by reason, captions truncated."""
    file_index: int
    out: Path
    count_tokens: Callable[[list[str]], list[int]]
    max_tokens: int
    too_long: str
    parts: list[dict] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0

    def flush(self, buffer: list[tuple[RawRow, tuple[str, str, int]]]) -> None:
        """Count (and with --too-long skip, drop) the captions over the token limit; write the rest as a part."""
        long = [i for i, (_, (_, caption, _)) in enumerate(buffer)
                if len(caption.encode("utf-8")) + _SPECIAL_TOKENS > self.max_tokens]
        over = {i for i, n in zip(long, self.count_tokens([buffer[i][1][1] for i in long])) if n > self.max_tokens}
        if self.too_long == "skip":
            self.skipped["caption_too_long"] += len(over)
            buffer = [row for i, row in enumerate(buffer) if i not in over]
        else:
            self.truncated += len(over)
        if not buffer:
            return
        name = f"f{self.file_index:05d}-{len(self.parts):04d}.parquet"
        table = pa.table(
            {
                "key": [k for _, (k, _, _) in buffer],
                "caption": [c for _, (_, c, _) in buffer],
                "caption_digest": [digest(c) for _, (_, c, _) in buffer],
                "key_digest": [digest(k) for _, (k, _, _) in buffer],
                "image_source": [r.image_source for r, _ in buffer],
                "image_member": [r.image_member for r, _ in buffer],
                "image_row": [r.image_row for r, _ in buffer],
                "label": [lab for _, (_, _, lab) in buffer],
            },
            schema=SCAN_SCHEMA,
        )
        write_atomic(self.out / SCAN / name, lambda p: pq.write_table(table, p))
        self.parts.append({"name": name, "rows": table.num_rows})


def read_scan_marker(out: Path, file_index: int) -> dict | None:
    """The done marker of input file `file_index`, or None when it has not been scanned to the end."""
    path = scan_marker(out, file_index)
    return json.loads(path.read_text()) if path.exists() else None


def read_digests(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The caption and key digests of scan part `path`, as two 'V16' arrays (views of the Arrow buffers)."""
    table = pq.read_table(path, columns=["caption_digest", "key_digest"])
    return tuple(
        np.frombuffer(table.column(c).combine_chunks().buffers()[1], dtype="V16")[: table.num_rows]
        for c in ("caption_digest", "key_digest")
    )
