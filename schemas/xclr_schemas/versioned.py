"""Reading a stage's directory: its manifest (present means the directory is complete; its schema version must be
this xclr's), and the one rule for a directory whose files cannot be read as its contract says (`unreadable_as`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

from xclr_schemas import storage
from xclr_schemas.names import MANIFEST

# What reading a damaged, truncated or foreign file raises: numpy, pyarrow and json on bad bytes, and a manifest of
# other keys or types used as the contract says.
UNREADABLE = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError, pa.ArrowException)


@contextmanager
def unreadable_as(error: type[Exception], root: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn any of UNREADABLE raised inside into `error`: one line naming `root` (a `what`) and the first line of
    the cause. `error` itself passes through."""
    try:
        yield
    except error:
        raise
    except UNREADABLE as exc:
        cause = (str(exc).strip().splitlines() or [""])[0]
        raise error(f"{root} is not a readable {what} ({type(exc).__name__}: {cause})") from None


def read_versioned_manifest(root: str | os.PathLike, version: str, error: type[Exception], what: str,
                            rerun: str) -> dict:
    """``root/manifest.json`` as a dict (`root` a local path or a URL). Raises `error` when it is absent (the
    directory is not a complete `what`; the message suggests `rerun`), not a JSON object, or its ``schema_version``
    is not `version`."""
    path = storage.join(root, MANIFEST)
    if not storage.exists(path):
        raise error(f"{root} is not a complete {what} (no {MANIFEST}; rerun {rerun})")
    with unreadable_as(error, root, what):
        manifest = json.loads(storage.read_text(path))
    if not isinstance(manifest, dict):
        raise error(f"{path} is not a JSON object")
    if manifest.get("schema_version") != version:
        raise error(f"{root} has schema version {manifest.get('schema_version')!r}, this xclr reads {version!r}")
    return manifest
