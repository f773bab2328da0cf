"""A hung rank (docs/cluster.md, "Fault injection"): SIGSTOP of one of two torchrun ranks in the middle of a run.

The other rank's next collective waits past `--rank-timeout` (`xclr_train.distributed`) and it exits with one line
naming the option; torchrun then stops the group (SIGTERM, which a stopped process does not handle, then SIGKILL
when its grace runs out: 30 s for a restart, fixed in torch 2.14's agent) and starts it again (`--max-restarts 1`),
which resumes from latest.pt with `--resume latest`. The run ends with the checkpoint of an uninterrupted run, bit
for bit, and every step logged once. The uninterrupted run goes while the group waits out the timeout and
torchrun's grace: its CPUs are idle then.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil
import pytest
import torch
from fault_ledger import passes
from train_helpers import (
    assert_same_state,
    ranks_once_in_epoch_3,
    torchrun_cmd,
    train_metrics,
    train_samples_lost,
    untimed,
)

pytestmark = pytest.mark.slow

STEPS, BATCH, PER_EPOCH = 12, 8, 32  # 2 ranks: global batches of 16, 2 steps an epoch, 6 epochs
TIMEOUT = 5  # --rank-timeout of the run with the hung rank: seconds, not the default half hour
STOPPED = 0  # the main rank, which writes the checkpoints and holds the group's store


def train_args(shards, out: Path) -> list:
    """As test_cluster_faults' kill -9 of a rank: a metrics line every step, one DataLoader worker a rank."""
    return ["-m", "xclr_train", "--data", shards, "--out", out, "--arch", "convnet", "--image-size", "16",
            "--no-progress", "--log-every", "1", "--batch-size", BATCH, "--steps", STEPS, "--samples-per-epoch",
            PER_EPOCH, "--workers", 1, "--loss", "supcon", "--resume", "latest"]


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def assert_recovered(run: Path, whole: Path, log: str, ended: bool) -> None:
    """The other rank exited with status 2 after one line naming the timeout, and no traceback; torchrun restarted
    the group and had `ended` the stopped rank; the run ends with the uninterrupted run's checkpoint and metrics
    lines (less their timings)."""
    said = [line for line in log.splitlines() if "--rank-timeout" in line]
    assert len(said) == 1 and f"within --rank-timeout {TIMEOUT} s" in said[0], log[-5000:]
    assert "Traceback" not in log and f"exitcode: 2) local_rank: {1 - STOPPED} " in log, log[-5000:]
    assert "will restart worker group" in log and ended, log[-5000:]
    a = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(whole / "checkpoints" / "latest.pt", weights_only=True)
    for key in ("model", "method", "optimizer", "skipped", "step", "epoch"):
        assert_same_state(a[key], b[key], key)
    assert untimed(train_metrics(run)) == untimed(train_metrics(whole))


def test_a_stopped_rank_times_out_and_torchrun_restarts_the_group_from_latest(tux_shards, tmp_path, fault_ledger):
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 as in test_cluster_faults (docs/cluster.md); INFO: torchrun logs restarts
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    run, whole, log = tmp_path / "hung", tmp_path / "whole", tmp_path / "torchrun.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(torchrun_cmd(2, *train_args(tux_shards, run), "--rank-timeout", TIMEOUT,
                                             max_restarts=1), env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    spawned: list[psutil.Process] = []  # every rank and DataLoader worker seen, to clean up after a failure
    try:
        ranks = ranks_once_in_epoch_3(proc, run, log)
        spawned += psutil.Process(proc.pid).children(recursive=True)
        stopped = ranks[str(STOPPED)]
        stopped.suspend()  # SIGSTOP
        at = max(x["step"] for x in train_metrics(run))
        reference = subprocess.run(torchrun_cmd(2, *train_args(tux_shards, whole)), env=env, capture_output=True,
                                   text=True, timeout=300)
        assert reference.returncode == 0, reference.stderr[-5000:]
        assert proc.wait(timeout=180) == 0, log.read_text()[-5000:]
        ended = not stopped.is_running()  # torchrun's SIGTERM stays pending in a stopped process; its SIGKILL
    finally:
        if proc.poll() is None:
            spawned += psutil.Process(proc.pid).children(recursive=True)
            kill_all([psutil.Process(proc.pid), *spawned])
            proc.wait()
        kill_all(spawned)

    lines = train_metrics(run)
    lost = train_samples_lost(lines, STEPS, 2 * BATCH)
    fault_ledger.record("hung rank", f"train on 2 torchrun ranks: SIGSTOP of rank {STOPPED} after step {at}, the other "
                        f"out at --rank-timeout {TIMEOUT}, elastic restart, --resume latest",
                        survived=passes(assert_recovered, run, whole, log.read_text(), ended) and lost == 0,
                        samples_lost=lost)
    assert [x["step"] for x in lines] == list(range(1, STEPS + 1)) and lost == 0
    assert_recovered(run, whole, log.read_text(), ended)
