"""Output directories of the prep stages: claimed for one plan, refused for another, and a full disk reported as
one line (one command at a time writes each: the command line holds `xclr_schemas.out_lock`).

A `Plan` (what `claim_dir` stores in PLAN, with its fingerprint) names the inputs of a run by their identity
(`InputIdentity`) and the options that change its output: what a refusal and `require_unchanged` compare to say
what changed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from xclr_prep.errors import PrepError
from xclr_schemas import storage
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


def json_digest(obj: object) -> str:
    """The SHA-256 (hex) of `obj` as JSON with sorted keys: a fingerprint of plain values (tuples as lists)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class InputIdentity:
    """One input of a plan: its path and what identifies its content, an input file's `format`, `size` and
    `version` (`storage.stat_key`: its mtime, or the store's ETag or generation), or an input directory's
    `manifest_sha256`. In PLAN, a JSON object of the fields that are set."""
    path: str
    format: str | None = None
    size: int | None = None
    version: str | None = None
    manifest_sha256: str | None = None

    @classmethod
    def of_file(cls, path: str, format: str) -> InputIdentity | None:
        """The identity of input file `path` now; None when it is gone."""
        try:
            size, version = storage.stat_key(path)
        except FileNotFoundError:
            return None
        return cls(path, format=format, size=size, version=version)

    @classmethod
    def of_dir(cls, path: Path) -> InputIdentity:
        """The identity of a stage's output directory `path` now: the SHA-256 of its MANIFEST (none when absent)."""
        manifest = path / MANIFEST
        return cls(str(path), manifest_sha256=hashlib.sha256(manifest.read_bytes()).hexdigest()
                   if manifest.exists() else None)

    def now(self) -> InputIdentity | None:
        """This input's identity read again: an input with a `format` is a file (None when gone), else a stage's
        output directory."""
        return InputIdentity.of_dir(Path(self.path)) if self.format is None else InputIdentity.of_file(
            self.path, self.format)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Plan:
    """What a run's output depends on: its `inputs` (None in a PLAN written before plans kept them), its `options`
    (JSON: nested dicts of plain values; None likewise) and the `schema_version` of its output (None in a PLAN
    written before plans kept it). `fingerprint`: the SHA-256 of `to_json` with sorted keys."""
    inputs: tuple[InputIdentity, ...] | None
    options: dict | None
    schema_version: int | None = None

    @property
    def fingerprint(self) -> str:
        return json_digest(self.to_json())

    def to_json(self) -> dict:
        record = {"inputs": [i.to_json() for i in self.inputs or ()], "options": self.options}
        return record | ({} if self.schema_version is None else {"schema_version": self.schema_version})

    @classmethod
    def from_json(cls, record: dict) -> Plan:
        """The plan of a PLAN's JSON (its fingerprint aside)."""
        inputs = record.get("inputs")
        return cls(None if inputs is None else tuple(InputIdentity(**i) for i in inputs), record.get("options"),
                   record.get("schema_version"))

    def now(self) -> Plan:
        """This plan with its inputs' identities read again (an input gone is left out)."""
        return replace(self, inputs=tuple(i for i in map(InputIdentity.now, self.inputs or ()) if i is not None))


def read_plan(path: Path) -> Plan | None:
    """The plan of the output directory `path`, None when it has no PLAN."""
    plan = path / PLAN
    return Plan.from_json(json.loads(plan.read_text())) if plan.exists() else None


def claim_dir(path: Path, plan: Plan, kind: str, contents: str, hint: str) -> bool:
    """Create or resume the output directory `path` of a run of `plan`.

    A new directory gets PLAN (`plan` and its fingerprint). One whose PLAN holds the same fingerprint is resumed,
    and so is one whose PLAN, written before plans kept a schema version, holds the same inputs and options. Any
    other PLAN is refused with a PrepError: `refuse_changed_inputs`'s when inputs changed, else one naming
    `contents`, the options that differ and `hint`. A non-empty directory without a plan (OUT's lock file aside) is
    refused, naming `kind`. Returns True when `path` already holds the complete result (its MANIFEST exists).
    """
    if (before := read_plan(path)) is not None:
        fingerprint = json.loads((path / PLAN).read_text()).get("fingerprint")
        legacy = before.schema_version is None and replace(before, schema_version=plan.schema_version) \
            .fingerprint == plan.fingerprint
        if fingerprint != plan.fingerprint and not legacy:
            refuse_changed_inputs(path, plan)
            changed = option_changes(before, plan)
            if not changed and before.inputs is not None:
                changed = ["the inputs' paths or order"]
            detail = f" ({'; '.join(changed)})" if changed else ""
            raise PrepError(f"{path} holds {contents} from other inputs or options{detail}; {hint}")
        return (path / MANIFEST).exists()
    if path.exists() and any(p.name != LOCK for p in path.iterdir()):
        raise PrepError(f"{path} exists, is not empty and is not an xclr {kind} directory")
    write_json_atomic(path / PLAN, {"fingerprint": plan.fingerprint, **plan.to_json()})
    return False


def refuse_changed_inputs(path: Path, plan: Plan) -> None:
    """PrepError when `path` was started (its PLAN written) on inputs that `plan`'s differ from: a rerun would mix
    the parts of old and new inputs. Cheap (the inputs' identities only), so a stage may call it before any work."""
    if (before := read_plan(path)) is not None and (changed := input_changes(before, plan)):
        raise PrepError(f"{path} was started on inputs that changed since: {'; '.join(changed)}; put them back as "
                        f"they were and rerun, or delete {path} (or use another --out) to start over")


def require_unchanged(out: Path, plan: Plan) -> None:
    """PrepError when the inputs of `plan` (read when the run started) differ now (`Plan.now`, as a stage publishes
    its manifest): the output would mix old and new inputs, so no manifest."""
    if changed := input_changes(plan, plan.now()):
        raise PrepError(f"inputs changed while the command ran: {'; '.join(changed)}; no manifest was written to "
                        f"{out}, whose parts would mix old and new inputs: delete it and rerun")


def input_changes(before: Plan, now: Plan) -> list[str]:
    """Each input of `now` that is new or was modified since `before`, and each input of `before` that is gone (an
    input at another path with the same identity moved: not a change); [] when `before` lists no inputs."""
    def identity(i: InputIdentity) -> InputIdentity:
        return replace(i, path="")

    if before.inputs is None:
        return []
    old = {i.path: i for i in before.inputs}
    new = {i.path: i for i in now.inputs or ()}
    gone = [identity(old[p]) for p in old if p not in new]
    added = [identity(new[p]) for p in new if p not in old]
    changes = [f"{p} is gone" for p in old if p not in new and identity(old[p]) not in added]
    for p, i in new.items():
        if p not in old:
            changes += [] if identity(i) in gone else [f"{p} is new"]
        elif i != old[p]:
            sizes = (old[p].size, i.size)
            changes.append(f"{p} was modified" + (f" (size {sizes[0]} -> {sizes[1]} bytes)"
                                                  if sizes[0] != sizes[1] else ""))
    return changes


def option_changes(before: Plan, now: Plan) -> list[str]:
    """Each option of `now` whose value differs from `before`'s, as ``name old -> new`` (nested options by their
    dotted name); [] when `before` lists no options."""
    def leaves(value: object, name: str) -> dict[str, object]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in leaves(item, f"{name}.{key}" if name else key)
                    .items()}
        return {name: value}

    if before.options is None:
        return []
    old, new = leaves(before.options, ""), leaves(now.options or {}, "")
    return [f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
