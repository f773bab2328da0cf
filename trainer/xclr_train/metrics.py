"""Rank 0's metrics: one JSON object per line in ``RUN/metrics.jsonl``, mirrored to TensorBoard when installed."""

from __future__ import annotations

import json
from pathlib import Path

from xclr_schemas.atomic import write_atomic
from xclr_schemas.names import METRICS


class MetricsLog:
    def __init__(self, run_dir: Path, resumed_step: int) -> None:
        """Append to the run's log, first dropping lines past `resumed_step` (steps a resumed run repeats)."""
        path = run_dir / METRICS
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = "".join(line for line in lines if 0 < _step(line) <= resumed_step)
            write_atomic(path, lambda tmp: tmp.write_text(kept, encoding="utf-8"))
        self.file = open(path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self.tensorboard = None
        else:
            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        """Append `record` (it must hold "step"); numbers also go to TensorBoard as train/<name>."""
        self.file.write(json.dumps(record, sort_keys=True) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for name, value in record.items():
                if isinstance(value, (int, float)) and name != "step":
                    self.tensorboard.add_scalar(f"train/{name}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _step(line: str) -> int:
    """The step of a log line; 0 for a torn last line (the process was killed while writing it)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 0
