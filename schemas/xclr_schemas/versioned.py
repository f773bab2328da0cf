"""Reading a stage's manifest: present means the directory is complete; its schema version must be this xclr's."""

from __future__ import annotations

import json
import os

from xclr_schemas import storage
from xclr_schemas.names import MANIFEST


def read_versioned_manifest(root: str | os.PathLike, version: str, error: type[Exception], what: str,
                            rerun: str) -> dict:
    """``root/manifest.json`` as a dict (`root` a local path or a URL). Raises `error` when it is absent (the
    directory is not a complete `what`; the message suggests `rerun`) or its ``schema_version`` is not `version`."""
    path = storage.join(root, MANIFEST)
    if not storage.exists(path):
        raise error(f"{root} is not a complete {what} (no {MANIFEST}; rerun {rerun})")
    manifest = json.loads(storage.read_text(path))
    if manifest.get("schema_version") != version:
        raise error(f"{root} has schema version {manifest.get('schema_version')!r}, this xclr reads {version!r}")
    return manifest
