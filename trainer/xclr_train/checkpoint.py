"""Checkpoints: ``RUN/checkpoints/latest.pt`` after every epoch and at a preemption's step (atomically replaced)
and ``epoch-NNNN.pt`` every `--save-every` epochs. A checkpoint is a dict of tensors and plain values, saved and
loaded with torch's ``weights_only`` loader (no arbitrary unpickling):

    {"model": state_dict (unwrapped), "model_config": asdict(models.ModelConfig),
     "method": the objective's own state (predictor, momentum network, queue; empty for the others),
     "optimizer": ..., "scaler": ..., "epoch": epochs finished, "step": steps finished,
     "skipped": skip counts by reason in the finished epochs, "config": the run's options,
     "inputs": the shards' (size, version tag) when the run started (`data.ShardSet.stamps`),
     "inside": None at an epoch's end; at a preemption inside an epoch, each rank's place in it
               (`xclr_train.inside_epoch`),
     "sha256": `content_digest` of everything else}

**The digest is inside the file**, not in a ``NAME.sha256`` beside it: one file is replaced atomically
(`xclr_schemas.atomic`) and published to an object store as one object, so a checkpoint and its digest can never be
of two different saves (two files would be, after a kill between their renames or their uploads, and a sound
checkpoint would then read as damaged), and a checkpoint copied alone keeps its check. It is a digest of the
content, not of the file's bytes: SHA-256 over a walk of the state (every tensor's dtype, shape and bytes, every
other value's repr, dict keys in sorted order), recomputed from what torch loads. A truncated file does not load
(its zip directory is at the end); a flipped bit loads as other values (or not at all) and fails the digest; a
flipped bit that changes nothing torch reads (zip padding) is harmless and passes. A checkpoint without "sha256"
is read unchecked only when its keys are those of a checkpoint written before digests (`UNDIGESTED`); with any
other key (a damaged key name among them) it is damaged.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from xclr_schemas.atomic import write_atomic
from xclr_schemas.names import LATEST
from xclr_train.errors import TrainError, first_line
from xclr_train.models import Encoder, ModelConfig

DIGEST = "sha256"
# the keys of a checkpoint written before digests: the only ones a checkpoint without DIGEST may have
UNDIGESTED = frozenset({"model", "model_config", "method", "optimizer", "scaler", "epoch", "step", "skipped", "config",
                        "inside"})
EPOCH_NAME = re.compile(r"epoch-(\d+)\.pt")


class CheckpointError(TrainError):
    """A checkpoint that cannot be written or resumed from (the message is one line, for the user)."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file that does not load, or whose content does not match its digest."""


def epoch_name(epoch: int) -> str:
    """The file name of the checkpoint kept after epoch `epoch`: epoch-NNNN.pt."""
    return f"epoch-{epoch:04d}.pt"


def content_digest(state: dict) -> str:
    """SHA-256 (hex) of a checkpoint's content, as the module docstring defines it."""
    digest = hashlib.sha256()

    def walk(value) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                digest.update(f"K{key!r}".encode())
                walk(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__}{len(value)}".encode())
            for item in value:
                walk(item)
        else:
            digest.update(f"V{value!r}".encode())

    walk(state)
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` with its digest to `path` so that `path` is always either the old or the whole new checkpoint.

    A failed write (a full disk, a file-size limit) leaves the old file and raises CheckpointError.
    """
    state = {**state, DIGEST: content_digest(state)}
    try:
        write_atomic(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as a RuntimeError of its zip writer
        free = shutil.disk_usage(path.parent).free / 2**30
        raise CheckpointError(f"could not write checkpoint {path} ({free:.1f} GiB free there): {first_line(exc)}") \
            from None


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at `path` less its digest, whatever its model; DamagedCheckpoint when it does not load or
    fails its digest, CheckpointError when it is missing or not an xclr checkpoint."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise DamagedCheckpoint(f"{path} is not a readable xclr checkpoint: damaged, cut short or another kind of "
                                f"file ({type(exc).__name__}: {first_line(exc).split('. ')[0]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an xclr checkpoint")
    saved = state.pop(DIGEST, None)
    if saved is not None and saved != content_digest(state):
        raise DamagedCheckpoint(f"{path} is damaged: its content does not match the SHA-256 digest saved with it "
                                "(a flipped bit or an overwritten part)")
    if saved is None and "model_config" in state and not UNDIGESTED.issuperset(state):
        raise DamagedCheckpoint(f"{path} is damaged: it has no SHA-256 digest but keys only a checkpoint with one has "
                                f"({', '.join(sorted(set(state) - UNDIGESTED))})")
    if not isinstance(state.get("model_config"), dict):
        raise CheckpointError(f"{path} is not an xclr checkpoint")
    return state


@dataclass(frozen=True)
class Found:
    """The checkpoint `--resume latest` resumes from: its path and state, and `passed_over`, the one-line error of a
    damaged latest.pt when `path` is an older checkpoint beside it."""
    path: Path
    state: dict
    passed_over: str | None = None


def read_latest(folder: Path) -> Found | None:
    """FOLDER/latest.pt; when it is damaged, or missing beside epoch-NNNN.pt files (deleted, or a URL run killed
    between their uploads), the newest intact epoch-NNNN.pt (the epoch number orders them by step); None when the
    folder holds neither (a new run). DamagedCheckpoint when no checkpoint there is intact."""
    latest = folder / LATEST
    kept = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := EPOCH_NAME.fullmatch(p.name))) \
        if folder.is_dir() else []
    if not latest.exists():
        if not kept:
            return None
        damaged = f"{latest} is missing"
    else:
        try:
            return Found(latest, read_checkpoint(latest))
        except DamagedCheckpoint as exc:
            damaged = str(exc)
    for _, path in reversed(kept):
        try:
            return Found(path, read_checkpoint(path), damaged)
        except DamagedCheckpoint:
            continue
    raise DamagedCheckpoint(f"{damaged}; and no intact epoch-NNNN.pt beside it to resume from: start the run again "
                            "in a new --out")


def load_checkpoint(path: Path, model_config: dict, state: dict | None = None) -> dict:
    """The checkpoint at `path` (`state` when it is read already); CheckpointError when it is unreadable or its
    model differs from `model_config`."""
    state = read_checkpoint(path) if state is None else state
    theirs = state["model_config"]
    if theirs != model_config:
        diff = ", ".join(f"{k}={theirs.get(k)} (this run: {model_config.get(k)})"
                         for k in sorted(set(theirs) | set(model_config)) if theirs.get(k) != model_config.get(k))
        raise CheckpointError(f"{path} holds another model: {diff}")
    return state


def non_finite(value, where: str = "") -> str | None:
    """The key path of the first floating-point tensor in `value` (nested dicts, lists and tuples) with a NaN or an
    infinity ("model/conv1.weight"), or None when every one is finite."""
    if isinstance(value, torch.Tensor):
        return where.rstrip("/") if value.is_floating_point() and not bool(value.isfinite().all()) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    return next((found for key, item in items if (found := non_finite(item, f"{where}{key}/")) is not None), None)


def read_encoder(path: Path, state: dict) -> Encoder:
    """The encoder of checkpoint `state` (read from `path`) with its weights, in eval mode."""
    try:
        config = ModelConfig(**state["model_config"])
    except TypeError:
        raise CheckpointError(f"{path} was written by another xclr version (its model_config has the fields "
                              f"{sorted(state['model_config'])})") from None
    model = Encoder(config)
    try:
        model.load_state_dict(state.get("model"))
    except (TypeError, RuntimeError) as exc:  # weights of other keys, shapes or types; not a dict
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{path} does not hold the weights of its model_config: "
                              f"{lines[1] if len(lines) > 1 else lines[0]}") from None
    return model.eval()
