"""Rank 0's metrics: one JSON object per line in ``RUN/metrics.jsonl``, mirrored to TensorBoard in ``RUN/tensorboard``
(``tensorboard --logdir RUN``) as train/<name>."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from xclr_schemas.atomic import write_atomic
from xclr_schemas.names import METRICS


class MetricsLog:
    def __init__(self, run_dir: Path, resumed_step: int) -> None:
        """Append to the run's log, first dropping lines (and TensorBoard events) past `resumed_step`: the steps a
        resumed run repeats."""
        path = run_dir / METRICS
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = "".join(line for line in lines if 0 < _step(line) <= resumed_step)
            write_atomic(path, lambda tmp: tmp.write_text(kept, encoding="utf-8"))
        self.file = open(path, "a", encoding="utf-8")
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_step + 1)

    def write(self, record: dict) -> None:
        """Append `record` (it must hold "step"); its numbers also go to TensorBoard."""
        self.file.write(json.dumps(record, sort_keys=True) + "\n")
        self.file.flush()
        for name, value in record.items():
            if isinstance(value, (int, float)) and name != "step":
                self.tensorboard.add_scalar(f"train/{name}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        self.tensorboard.close()


def _step(line: str) -> int:
    """The step of a log line; 0 for a torn last line (the process was killed while writing it)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 0
