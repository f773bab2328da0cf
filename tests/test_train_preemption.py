"""Preemption (`xclr_train.preemption`): SIGTERM or SIGUSR1 at a random step, to one process or to one torchrun rank,
saves latest.pt at that step, inside an epoch, and exits with PREEMPTED_EXIT and one line; `--resume latest` then
ends bit for bit as the uninterrupted run does: weights, optimizer, the objective's queue, metrics lines (less their
timings) and skip counts."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
from fault_ledger import passes, samples_lost
from train_helpers import assert_same_state, one_thread, torchrun_cmd, train_in_process, untimed
from train_helpers import train_metrics as metrics

from xclr_train.data import Needs, Rows, ShardStream, find_shards, make_loader
from xclr_train.preemption import PREEMPTED_EXIT, Preemption, blocked

STEPS, PER_EPOCH, BATCH = 16, 12, 8  # two checkpoint intervals: 12 steps, then 4


def args(shards, out, batch: int = BATCH) -> list[str]:
    """X-CLR with a queue (state beyond the weights), two DataLoader workers (their turns must resume), a metrics
    line every 3 steps (a window open at the signal)."""
    return ["--data", shards, "--out", out, "--arch", "convnet", "--image-size", "16", "--batch-size", batch,
            "--steps", STEPS, "--samples-per-epoch", PER_EPOCH * batch, "--workers", "2", "--log-every", "3",
            "--queue-size", "24", "--no-progress"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def train_cmd(*a) -> list[str]:
    return [sys.executable, "-m", "xclr_train", *map(str, a)]


def stopped_run(cmd: list[str], run, rng: random.Random,
                trainers=lambda proc: [proc.pid]) -> subprocess.CompletedProcess:
    """Start `cmd`, wait for its metrics line of step 3 or 6 (at random), send SIGTERM or SIGUSR1 to the first of
    its `trainers(proc)` (the training processes), which then stop a step or so later, inside the first epoch and
    mostly inside a metrics window; then SIGTERM to every trainer and its DataLoader workers every 50 ms until `cmd`
    exits (signals during the save, and to the workers, as a scheduler may send them)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            start_new_session=True)
    wait_for = rng.randint(1, 2)
    deadline = time.monotonic() + 300
    while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= wait_for):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    pids = trainers(proc)
    os.kill(pids[0], rng.choice([signal.SIGTERM, signal.SIGUSR1]))
    while proc.poll() is None:
        time.sleep(0.05)
        for pid in pids:
            try:
                for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                    p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def assert_same_run(resumed, whole) -> None:
    """The same final checkpoint (every tensor equal) and the same metrics lines, less their timings."""
    a = torch.load(resumed / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(whole / "checkpoints" / "latest.pt", weights_only=True)
    for key in ("model", "method", "optimizer", "skipped", "step", "epoch"):
        assert_same_state(a[key], b[key], key)
    assert untimed(metrics(resumed)) == untimed(metrics(whole))


def assert_stopped_inside_an_epoch(proc: subprocess.CompletedProcess, run, ranks: int = 1) -> int:
    """Each rank exited with PREEMPTED_EXIT after one line saying how to resume, and no traceback of xclr's (torchrun
    prints its own); latest.pt holds a step inside an epoch; returns that step."""
    assert "/xclr_train/" not in proc.stderr, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if "--resume latest" in line]
    assert len(said) == ranks and all("xclr-train: stopped by SIG" in line for line in said), proc.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert 0 < state["step"] < STEPS and state["step"] % PER_EPOCH, state["step"]
    assert f"at step {state['step']} of {STEPS}" in said[0]
    assert state["inside"] is not None
    assert not (run / "checkpoints" / "epoch-0002.pt").exists()
    return state["step"]


@pytest.mark.slow
def test_a_signal_at_a_random_step_then_resume_equals_the_uninterrupted_run(tux_shards, tmp_path, fault_ledger):
    rng = random.Random(os.environ.get("XCLR_FAULT_SEED", "preempt"))
    with one_thread():
        train_in_process(*args(tux_shards, tmp_path / "whole"))
    run = tmp_path / "stopped"
    proc = stopped_run(train_cmd(*args(tux_shards, run)), run, rng)
    assert proc.returncode == PREEMPTED_EXIT and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    step = assert_stopped_inside_an_epoch(proc, run)

    refused = train_in_process(*args(tux_shards, run), "--resume", "latest", "--workers", "1", check=False)
    assert refused.exit_code == 2 and "resume it with --workers 2" in refused.stderr.splitlines()[-1]
    with one_thread():
        train_in_process(*args(tux_shards, run), "--resume", "latest")
    fault_ledger.record("stop signal", f"train: a stop signal at step {step} of {STEPS} (1 process), --resume latest",
                        survived=passes(assert_same_run, run, tmp_path / "whole"),
                        samples_lost=lost(run, tmp_path / "whole", BATCH))
    assert_same_run(run, tmp_path / "whole")


def lost(run, whole, global_batch: int) -> int:
    """Training samples lost or repeated: a metrics line (every 3 steps) missing or held twice counts 3 batches."""
    return samples_lost([x["step"] for x in metrics(whole)], [x["step"] for x in metrics(run)]) * 3 * global_batch


@pytest.mark.slow
def test_a_signal_to_one_of_two_torchrun_ranks_then_resume_equals_the_uninterrupted_run(tux_shards, tmp_path,
                                                                                        fault_ledger):
    """Rank 1 alone is signalled: both ranks stop after the same step, rank 0 saves both ranks' stream places."""
    rng = random.Random(os.environ.get("XCLR_FAULT_SEED", "preempt-ddp"))
    batch = BATCH // 2

    def torchrun(out, *extra) -> list[str]:
        return torchrun_cmd(2, "-m", "xclr_train", *args(tux_shards, out, batch), *extra)

    subprocess.run(torchrun(tmp_path / "whole"), check=True, capture_output=True, env=env())
    run = tmp_path / "stopped"

    def ranks(proc) -> list[int]:
        """The two ranks' processes (torchrun's children), rank 1 first."""
        found = sorted(psutil.Process(proc.pid).children(), key=lambda p: -int(p.environ()["RANK"]))
        assert len(found) == 2
        return [p.pid for p in found]

    proc = stopped_run(torchrun(run), run, rng, ranks)
    assert proc.stderr.count(f"exitcode  : {PREEMPTED_EXIT} ") == 2, proc.stderr[-3000:]  # torchrun's summary
    step = assert_stopped_inside_an_epoch(proc, run, ranks=2)
    assert len(torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["inside"]) == 2

    resumed = subprocess.run(torchrun(run, "--resume", "latest"), capture_output=True, text=True, env=env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    fault_ledger.record("stop signal",
                        f"train: a stop signal to rank 1 of 2 at step {step} of {STEPS} (torchrun), --resume latest",
                        survived=passes(assert_same_run, run, tmp_path / "whole"),
                        samples_lost=lost(run, tmp_path / "whole", 2 * batch))
    assert_same_run(run, tmp_path / "whole")


@pytest.mark.slow
def test_a_signal_during_start_up_exits_before_the_first_step_without_a_checkpoint(tux_shards, tmp_path):
    """Rank 0 of two, started alone, waits in the rendezvous (its start-up); signalled there, then joined by rank 1,
    both ranks stop before their first step: PREEMPTED_EXIT, one line each, no traceback, no checkpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = train_cmd(*args(tux_shards, tmp_path / "run"))

    def rank(r: int) -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={
            **env(), "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port)})

    first = rank(0)
    deadline = time.monotonic() + 120
    while not any(c.laddr.port == port and c.status == psutil.CONN_LISTEN
                  for c in psutil.Process(first.pid).net_connections()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    second = rank(1)
    for proc in (first, second):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == PREEMPTED_EXIT and "Traceback" not in stderr, stderr[-3000:]
        assert stderr.strip().splitlines()[-1].startswith("xclr-train: stopped by ")
        assert "before the first step, with nothing to save" in stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_dataloader_workers_started_amid_stop_signals_live_on(tux_shards):
    """SIGTERM every few milliseconds to this process and its DataLoader workers while ten loaders start their two
    workers each (as every epoch does): no worker dies (torch's own worker handler would die of one that came
    before the worker ignores it), and this process records the signal."""
    me = psutil.Process()
    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            for p in [me, *me.children()]:
                try:
                    if p.pid == me.pid or p.cmdline() == me.cmdline():  # this process and its forks, not Ray's
                        p.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:  # a worker that has just ended
                    pass
            time.sleep(0.002)

    def hung(signum, frame) -> None:  # a loader whose worker died may wait for it forever
        raise TimeoutError("the DataLoader stopped amid the signals")

    stream = ShardStream(find_shards(str(tux_shards)), 4, 16, "crop", Needs(), Rows(), seed=0, rank=0)
    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    with Preemption() as preemption:
        sender = threading.Thread(target=storm)
        sender.start()
        try:
            for _ in range(10):
                with blocked():
                    batches = iter(make_loader(stream, workers=2, pin_memory=False))
                assert [len(next(batches)["caption_id"]) for _ in range(2)] == [4, 4]
                del batches
        finally:
            stop.set()
            sender.join()
            signal.alarm(0)
            signal.signal(signal.SIGALRM, before)
    assert preemption.signal == signal.SIGTERM
