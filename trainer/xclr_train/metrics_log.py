"""Rank 0's metrics: one JSON object per line in ``RUN/metrics.jsonl``, mirrored to TensorBoard in ``RUN/tensorboard``
(``tensorboard --logdir RUN``) as train/<name>, or under its own name where it has a group (eval/knn_accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from xclr_schemas.atomic import write_atomic
from xclr_schemas.names import METRICS
from xclr_train.errors import TrainError, first_line


class MetricsLog:
    def __init__(self, run_dir: Path, resumed_step: int) -> None:
        """Append to the run's log, first dropping lines (and TensorBoard events) past `resumed_step`: the steps a
        resumed run repeats."""
        path = run_dir / METRICS
        self.kept: list[dict] = []  # the lines kept from before the resume
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line in lines if 0 < _step(line) <= resumed_step]
            write_atomic(path, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))
            self.kept = [json.loads(line) for line in kept]
        self.file = open(path, "a", encoding="utf-8")
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_step + 1)

    def write(self, record: dict) -> None:
        """Append `record` (it must hold "step"); its numbers also go to TensorBoard. TrainError when the line cannot
        be written (a full disk)."""
        try:
            self.file.write(json.dumps(record, sort_keys=True) + "\n")
            self.file.flush()
        except OSError as exc:
            raise TrainError(f"could not write {self.file.name}: {first_line(exc)}") from None
        for name, value in record.items():
            if isinstance(value, (int, float)) and name != "step":
                self.tensorboard.add_scalar(name if "/" in name else f"train/{name}", value, record["step"])

    def holds(self, step: int, name: str) -> bool:
        """Whether a line kept from before the resume has `name` at `step`."""
        return any(line["step"] == step and name in line for line in self.kept)

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:  # the line it could not flush: `write` raised for it already
            pass
        self.tensorboard.close()


def last_step(run_dir: Path) -> int:
    """The last step the run's log holds (0 for none)."""
    path = run_dir / METRICS
    return max((_step(line) for line in path.read_text(encoding="utf-8").splitlines()), default=0) \
        if path.exists() else 0


def _step(line: str) -> int:
    """The step of a log line; 0 for a torn last line (the process was killed while writing it)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 0
