"""Crash-safe file writes, the rule every stage's output follows (a file under its final name is complete):
write to a unique temporary name in the same directory, fsync, rename.

A reader never sees a half-written file under its final name; a process killed mid-write leaves only a
``*.tmp-*`` file, which `remove_temporaries` deletes at the start of the next run.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp-"


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success fsync it and rename it to `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(final: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and publish the result under `final` atomically."""
    with atomic_path(final) as tmp:
        write(tmp)


def write_json_atomic(final: Path, obj: object) -> None:
    """Write `obj` as indented JSON to `final` atomically."""
    write_atomic(final, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def remove_temporaries(root: Path) -> None:
    """Delete leftover temporary files under `root` (from killed writers)."""
    for p in root.rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
