"""Distributed training equals single-process training: real torchrun processes over gloo on the CPU (two ranks on a
single shard, more ranks than shards: test_in_run_eval's two-rank run)."""

from __future__ import annotations

import torch
from ddp_step import SPECS, results
from train_helpers import one_thread

from xclr_train.distributed import init_distributed


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
