"""Output directories of the prep stages: claimed for one plan, refused for another, and a full disk reported as
one line (one command at a time writes each: the command line holds `xclr_schemas.out_lock`).

A plan record (what `claim_dir` stores in PLAN beside the fingerprint) is JSON with ``inputs``, a list of
``{"path": ..., identity fields...}`` (size and version of an input file, the manifest digest of an input
directory), and ``options``: what a refusal and `require_unchanged` compare to say what changed.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xclr_prep.errors import PrepError
from xclr_schemas.atomic import write_json_atomic
from xclr_schemas.names import MANIFEST, PLAN
from xclr_schemas.out_lock import LOCK

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_no_space(e: BaseException) -> bool:
    """Whether `e` is a write that failed for want of space (a full device, or a quota)."""
    return isinstance(e, OSError) and e.errno in NO_SPACE


@contextmanager
def no_space_as_error(out: Path) -> Iterator[None]:
    """A write that fails for want of space in the body, the driver's or one a unit raised (`raypool` re-raises
    those as they are), becomes a PrepError naming OUT and the space left there; the finished units stay."""
    try:
        yield
    except OSError as e:
        if not is_no_space(e):
            raise
        free = shutil.disk_usage(out).free
        raise PrepError(f"no space left on the device of {out} ({free / 1e6:.1f} MB free there): free space or "
                        f"give it more, then rerun the same command: the work finished is kept") from e


def claim_dir(path: Path, fingerprint: str, record: dict, kind: str, contents: str, hint: str) -> bool:
    """Create or resume the output directory `path` of a run whose plan `record` hashes to `fingerprint`.

    A new directory gets PLAN (`record` plus the fingerprint). A directory whose plan has another fingerprint is
    refused with a PrepError: `refuse_changed_inputs`'s when inputs changed, else one naming `contents`, the options
    that differ and `hint`. A non-empty directory without a plan (OUT's lock file aside) is refused, naming `kind`.
    Returns True when `path` already holds the complete result (its MANIFEST exists).
    """
    plan = path / PLAN
    if plan.exists():
        before = json.loads(plan.read_text())
        if before.get("fingerprint") != fingerprint:
            refuse_changed_inputs(path, record)
            changed = option_changes(before, record)
            if not changed and "inputs" in before:
                changed = ["the inputs' paths or order"]
            detail = f" ({'; '.join(changed)})" if changed else ""
            raise PrepError(f"{path} holds {contents} from other inputs or options{detail}; {hint}")
        return (path / MANIFEST).exists()
    if path.exists() and any(p.name != LOCK for p in path.iterdir()):
        raise PrepError(f"{path} exists, is not empty and is not an xclr {kind} directory")
    write_json_atomic(plan, {"fingerprint": fingerprint, **record})
    return False


def refuse_changed_inputs(path: Path, record: dict) -> None:
    """PrepError when `path` was started (its PLAN written) on inputs that `record`'s differ from: a rerun would mix
    the parts of old and new inputs. Cheap (the inputs' identities only), so a stage may call it before any work."""
    plan = path / PLAN
    if plan.exists() and (changed := input_changes(json.loads(plan.read_text()), record)):
        raise PrepError(f"{path} was started on inputs that changed since: {'; '.join(changed)}; put them back as "
                        f"they were and rerun, or delete {path} (or use another --out) to start over")


def require_unchanged(out: Path, before: dict, now: dict) -> None:
    """PrepError when the inputs of plan record `now` (read again as a stage publishes its manifest) differ from
    those of `before` (read when the run started): the output would mix old and new inputs, so no manifest."""
    if changed := input_changes(before, now):
        raise PrepError(f"inputs changed while the command ran: {'; '.join(changed)}; no manifest was written to "
                        f"{out}, whose parts would mix old and new inputs: delete it and rerun")


def input_changes(before: dict, now: dict) -> list[str]:
    """Each input of plan record `now` that is new or was modified since `before`, and each input of `before` that
    is gone (an input at another path with the same identity moved: not a change); [] when `before` lists no inputs
    (a plan written before plans kept them)."""
    def identity(i: dict) -> dict:
        return {k: v for k, v in i.items() if k != "path"}

    if "inputs" not in before:
        return []
    old = {i["path"]: i for i in before["inputs"]}
    new = {i["path"]: i for i in now.get("inputs", [])}
    gone = [identity(old[p]) for p in old if p not in new]
    added = [identity(new[p]) for p in new if p not in old]
    changes = [f"{p} is gone" for p in old if p not in new and identity(old[p]) not in added]
    for p, i in new.items():
        if p not in old:
            changes += [] if identity(i) in gone else [f"{p} is new"]
        elif i != old[p]:
            sizes = (old[p].get("size"), i.get("size"))
            changes.append(f"{p} was modified" + (f" (size {sizes[0]} -> {sizes[1]} bytes)"
                                                  if sizes[0] != sizes[1] else ""))
    return changes


def option_changes(before: dict, now: dict) -> list[str]:
    """Each option of plan record `now` whose value differs from `before`'s, as ``name old -> new`` (nested
    options by their dotted name); [] when `before` lists no options (a plan written before plans kept them)."""
    def leaves(value: object, name: str) -> dict[str, object]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in leaves(item, f"{name}.{key}" if name else key)
                    .items()}
        return {name: value}

    if "options" not in before:
        return []
    old, new = leaves(before["options"], ""), leaves(now.get("options", {}), "")
    return [f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
