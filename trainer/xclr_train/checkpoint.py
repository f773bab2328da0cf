"""Checkpoints: ``RUN/checkpoints/latest.pt`` after every epoch and at a preemption's step (atomically replaced)
and ``epoch-NNNN.pt`` every `--save-every` epochs. A checkpoint is a dict of tensors and plain values, saved and
loaded with torch's ``weights_only`` loader (no arbitrary unpickling):

    {"model": state_dict (unwrapped), "model_config": asdict(models.ModelConfig),
     "method": the objective's own state (predictor, momentum network, queue; empty for the others),
     "optimizer": ..., "scaler": ..., "epoch": epochs finished, "step": steps finished,
     "skipped": skip counts by reason in the finished epochs, "config": the run's options,
     "inside": None at an epoch's end; at a preemption inside an epoch, each rank's place in it
               (`xclr_train.inside_epoch`)}
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from xclr_schemas.atomic import write_atomic
from xclr_train.errors import TrainError, first_line
from xclr_train.models import Encoder, ModelConfig


class CheckpointError(TrainError):
    """A checkpoint that cannot be written or resumed from (the message is one line, for the user)."""


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` to `path` so that `path` is always either the old or the whole new checkpoint.

    A failed write (a full disk, a file-size limit) leaves the old file and raises CheckpointError.
    """
    try:
        write_atomic(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as a RuntimeError of its zip writer
        free = shutil.disk_usage(path.parent).free / 2**30
        raise CheckpointError(f"could not write checkpoint {path} ({free:.1f} GiB free there): {first_line(exc)}") \
            from None


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`, whatever its model; CheckpointError when it is missing or not an xclr checkpoint."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"{path} is not a readable xclr checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model_config" not in state:
        raise CheckpointError(f"{path} is not an xclr checkpoint")
    return state


def load_checkpoint(path: Path, model_config: dict) -> dict:
    """The checkpoint at `path`; CheckpointError when it is unreadable or its model differs from `model_config`."""
    state = read_checkpoint(path)
    theirs = state["model_config"]
    if theirs != model_config:
        diff = ", ".join(f"{k}={theirs.get(k)} (this run: {model_config.get(k)})"
                         for k in sorted(set(theirs) | set(model_config)) if theirs.get(k) != model_config.get(k))
        raise CheckpointError(f"{path} holds another model: {diff}")
    return state


def read_encoder(path: Path, state: dict) -> Encoder:
    """The encoder of checkpoint `state` (read from `path`) with its weights, in eval mode."""
    try:
        config = ModelConfig(**state["model_config"])
    except TypeError:
        raise CheckpointError(f"{path} was written by another xclr version (its model_config has the fields "
                              f"{sorted(state['model_config'])})") from None
    model = Encoder(config)
    model.load_state_dict(state["model"])
    return model.eval()
