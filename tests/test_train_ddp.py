"""Distributed training equals single-process training: real torchrun processes over gloo on the CPU."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from ddp_step import SPECS, results
from train_helpers import one_thread, torchrun_cmd

from xclr_train.distributed import init_distributed


def torchrun(nproc: int, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = torchrun_cmd(nproc, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_one_and_two_processes_give_the_same_loss_and_gradients(two_ranks):
    """The same global batch, split over two ranks (all-gather with gradient, DDP averaging), gives the loss and
    parameter gradients of one process holding it all, for every loss (the frameworks with their predictor,
    momentum network and queue). The one process runs here, on one thread as each rank."""
    with one_thread():
        one = results(init_distributed("cpu", rank_timeout=300))
    two = two_ranks["step"]
    assert set(one) == set(two) == set(SPECS)
    for name in one:
        torch.testing.assert_close(two[name]["loss"], one[name]["loss"], rtol=1e-5, atol=1e-6, msg=name)
        assert one[name]["grads"].keys() == two[name]["grads"].keys()
        for param, g1 in one[name]["grads"].items():
            assert g1.abs().sum() > 0, f"{name}: no gradient reached {param}"
            torch.testing.assert_close(two[name]["grads"][param], g1, rtol=1e-4, atol=1e-6, msg=f"{name} {param}")


@pytest.mark.slow
def test_two_ranks_train_on_a_single_shard(tux_shards, tmp_path):
    """More ranks (x workers) than shards: resampling feeds every rank, nothing hangs, metrics come from rank 0."""
    one = tmp_path / "one-shard"
    one.mkdir()
    first = sorted(tux_shards.glob("shard-*.tar"))[0]
    (one / first.name).symlink_to(first)
    sizes = json.loads((tux_shards / "sizes.json").read_text())
    (one / "sizes.json").write_text(json.dumps({first.name: sizes[first.name]}))
    (one / "manifest.json").symlink_to(tux_shards / "manifest.json")
    torchrun(2, "-m", "xclr_train", "--data", one, "--out", tmp_path / "run", "--arch", "resnet18", "--image-size",
             "16", "--batch-size", "8", "--steps", "3", "--samples-per-epoch", "16", "--workers", "2",
             "--log-every", "1", "--no-progress", timeout=300)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all(x["samples_per_s"] > 0 and x["graph_hits"] > 0 for x in lines)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2
