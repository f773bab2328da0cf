"""A checkpoint's run directory and its name in the results: RUN/checkpoints/latest.pt -> RUN, with the checkpoint's
stem appended when it is not latest.pt (RUN-epoch-0001); a checkpoint outside a run directory is its stem."""

from __future__ import annotations

from xclr_schemas import storage
from xclr_schemas.names import CHECKPOINTS, LATEST


def run_dir(checkpoint: str) -> str | None:
    """RUN for a checkpoint at RUN/checkpoints/NAME.pt (a path or URL), else None."""
    folder = storage.parent(checkpoint)
    return storage.parent(folder) if storage.basename(folder) == CHECKPOINTS else None


def run_name(checkpoint: str) -> str:
    run, name = run_dir(checkpoint), storage.basename(checkpoint)
    stem = name.rsplit(".", 1)[0]
    if run is None:
        return stem
    return storage.basename(run) if name == LATEST else f"{storage.basename(run)}-{stem}"
