"""Running and reading the trainer: torchrun command lines, a run's metrics, and what the objective registry says."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import psutil
import torch
from click.testing import CliRunner, Result
from fault_ledger import samples_lost

from xclr_train.objectives import OBJECTIVES
from xclr_train.objectives.base import either


def torchrun_cmd(nproc: int, *args, max_restarts: int = 0) -> list[str]:
    """The real torchrun (single node, a local rendezvous) of `nproc` processes running `args`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", *map(str, args)]


def train_metrics(run: Path) -> list[dict]:
    """The lines of an `xclr-train` run's metrics.jsonl."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_samples_lost(lines: list[dict], steps: int, global_batch: int) -> int:
    """Training samples lost or repeated: the global batches of the steps 1..steps that metrics.jsonl (logged
    every step) misses or holds more than once."""
    return samples_lost(range(1, steps + 1), [x["step"] for x in lines]) * global_batch


def train_in_process(*args, check: bool = True) -> Result:
    """`xclr-train ARGS` run in this process by click's runner: the whole command, less a new interpreter's imports
    (seconds of torch and torchvision). Runs that must be killed, limited or proven as a real exit status use a
    subprocess instead."""
    from xclr_train.cli import main

    result = CliRunner().invoke(main, [*map(str, args)])
    if check and result.exit_code != 0:
        raise AssertionError(f"xclr-train failed ({result.exit_code}):\n{result.output[-4000:]}") from result.exception
    return result


def takers(option: str) -> str:
    """The registered objectives whose Args have the field `option`, in registry order, as an error lists them
    ("contrastive or triplet"): what a test expects without naming every objective."""
    return either([name for name, cls in OBJECTIVES.items() if option in {f.name for f in fields(cls.Args)}])


TIMINGS = {"samples_per_s", "step_time", "data_time", "eval/seconds"}  # metrics that vary from run to run


def untimed(lines: list[dict]) -> list[dict]:
    """Metrics lines less their TIMINGS: what two runs of the same computation must log alike."""
    return [{k: v for k, v in line.items() if k not in TIMINGS} for line in lines]


def assert_same_state(a, b, where: str = "") -> None:
    """Checkpoint contents equal bit for bit (tensors by torch.equal, the rest by ==)."""
    import torch

    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block, as each torchrun rank and subprocess of the tests runs it
    (OMP_NUM_THREADS=1): the same reductions bit for bit, and tiny tensors on a shared machine run faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ranks_once_in_epoch(proc: subprocess.Popen, run: Path, log: Path, epoch: int) -> dict:
    """Wait (at most 300 s) until the two-rank torchrun `proc` of a 2-step-epoch run has saved the checkpoint of
    epoch `epoch` - 1 and logged the first step of epoch `epoch`; its rank processes by LOCAL_RANK ("0", "1")."""
    deadline = time.monotonic() + 300
    saved = run / "checkpoints" / f"epoch-{epoch - 1:04d}.pt"
    while not saved.exists() or len(train_metrics(run)) < 2 * (epoch - 1) + 1:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    ranks = {p.environ().get("LOCAL_RANK"): p for p in psutil.Process(proc.pid).children()}
    assert set(ranks) == {"0", "1"}
    return ranks
