"""Output directories of the prep stages: claimed for one plan, refused for another."""

from __future__ import annotations

import json
from pathlib import Path

from xclr_prep.errors import PrepError
from xclr_schemas.atomic import write_json_atomic
from xclr_schemas.names import MANIFEST, PLAN


def claim_dir(path: Path, fingerprint: str, record: dict, kind: str, contents: str, hint: str) -> bool:
    """Create or resume the output directory `path` of a run whose options hash to `fingerprint`.

    A new directory gets PLAN (`record` plus the fingerprint). A directory whose plan has another
    fingerprint, or a non-empty directory without a plan, is refused with a PrepError naming `contents` / `kind`
    and `hint`. Returns True when `path` already holds the complete result (its MANIFEST exists).
    """
    plan = path / PLAN
    if plan.exists():
        if json.loads(plan.read_text()).get("fingerprint") != fingerprint:
            raise PrepError(f"{path} holds {contents} from other inputs or options; {hint}")
        return (path / MANIFEST).exists()
    if path.exists() and any(path.iterdir()):
        raise PrepError(f"{path} exists, is not empty and is not an xclr {kind} directory")
    write_json_atomic(plan, {"fingerprint": fingerprint, **record})
    return False
