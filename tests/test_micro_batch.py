"""--micro-batch: GradCache's two passes (`xclr_train.micro_batch`) give the whole step's loss, gradients and weights
where the network has no batch statistics, in one process and over two torchrun ranks; with BatchNorm in training
mode each chunk is normalised by its own statistics, as each rank is under DDP; and a real run trains with it."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from ddp_micro import CASES, CHUNK, M, run, train_case
from test_train_cli import SMALL
from train_helpers import train_in_process, train_metrics

from xclr_train.objectives import OBJECTIVES

NO_BATCH_STATS = [name for name, case in CASES.items() if not case.batch_stats]


def assert_same(got: dict, want: dict, name: str, parts: tuple[str, ...]) -> None:
    torch.testing.assert_close(got["loss"], want["loss"], rtol=1e-5, atol=1e-6, msg=name)
    for part in parts:
        assert got[part].keys() == want[part].keys(), (name, part)
        for key, value in want[part].items():
            torch.testing.assert_close(got[part][key], value, rtol=1e-4, atol=1e-6, msg=f"{name} {part} {key}")


@pytest.fixture(scope="module")
def whole() -> dict:
    return run(1, None)


@pytest.fixture(scope="module")
def chunked() -> dict:
    return run(1, CHUNK)


@pytest.mark.slow
def test_chunks_give_the_whole_steps_loss_gradients_and_weights(whole, chunked):
    """Every registered objective, test_vit with the heads' BatchNorm in eval mode: after 3 steps the losses, the last
    gradients, the weights, the momentum network and the queue of the chunked steps are the whole steps'. MoCo, BYOL
    and NNCLR included: their target network and queue move after the optimizer step, from the whole batch's
    outputs, and are constants of the loss within a step."""
    assert set(NO_BATCH_STATS) == set(OBJECTIVES)
    for name in NO_BATCH_STATS:
        assert_same(chunked[name], whole[name], name, ("grads", "params", "buffers", "target", "queue"))
        assert all(g.abs().sum() > 0 for g in whole[name]["grads"].values()), name


@pytest.mark.slow
def test_batchnorm_in_training_mode_normalises_each_chunk_by_its_own_statistics(whole, chunked):
    """With batch statistics the chunked step is another computation (not a bug): its losses differ from the whole
    step's; the two-rank test below shows they are those of ranks holding one chunk each."""
    for name in CASES:
        if CASES[name].batch_stats:
            assert not torch.allclose(chunked[name]["loss"][1:], whole[name]["loss"][1:], rtol=1e-3), name


def test_one_chunk_is_the_whole_step_even_with_batch_statistics_dropout_and_a_grad_scaler():
    """--micro-batch equal to the batch: BatchNorm in training mode sees the same batch, so losses, gradients,
    weights and running statistics (moved once per chunk, in the second pass) are the whole step's; Dropout draws the
    same masks in both passes (each chunk's RNG state is replayed); a grad scaler scales the cached gradients."""
    assert_same(train_case(CASES["bn_byol"], 1, M), train_case(CASES["bn_byol"], 1, None), "bn_byol",
                ("grads", "params", "buffers", "target"))
    dropout = replace(CASES["simclr"], dropout=0.2)
    assert_same(train_case(dropout, 1, M), train_case(dropout, 1, None), "dropout", ("grads", "params"))
    scaled = train_case(CASES["siglip"], 1, CHUNK, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10))
    assert_same(scaled, train_case(CASES["siglip"], 1, None), "grad scaler", ("grads", "params"))


@pytest.mark.slow
def test_two_ranks_with_chunks_equal_one_process(whole, chunked, two_ranks):
    """Real torchrun, two ranks of 4 samples in chunks of 2 (gathered columns, DDP reducing in the last chunk's
    backward only, the learned scalars' gradients among them): the losses and weights of one process holding the whole
    batch; with BatchNorm in training mode, those of one process in chunks of 2, whose chunks are the ranks' (the
    running statistics differ: DDP keeps rank 0's). The ranks run in the launch of test_train_ddp.py's 1-vs-2 test
    (the session fixture two_ranks)."""
    two = two_ranks["micro"]
    for name, case in CASES.items():
        if case.batch_stats:
            assert_same(two[name], chunked[name], name, ("grads", "params"))
        else:
            assert_same(two[name], whole[name], name, ("grads", "params", "target", "queue"))


@pytest.mark.slow
def test_a_real_run_trains_with_micro_batches(tux_shards, tmp_path):
    """xclr-train --micro-batch on the tuxpaint shards: every step logged with a finite loss that falls."""
    run_dir = tmp_path / "run"
    train_in_process("--data", tux_shards, "--out", run_dir, *SMALL, "--arch", "convnet", "--batch-size", "16",
                     "--micro-batch", "4", "--steps", "6", "--workers", "0")
    lines = train_metrics(run_dir)
    assert [x["step"] for x in lines] == list(range(1, 7))
    assert all(math.isfinite(x["loss"]) for x in lines) and lines[-1]["loss"] < lines[0]["loss"]


def test_a_micro_batch_that_does_not_divide_the_batch_is_a_one_line_error(tmp_path):
    result = train_in_process("--data", tmp_path, "--out", tmp_path / "run", *SMALL, "--batch-size", "16",
                              "--micro-batch", "6", check=False)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: --micro-batch 6 does not divide --batch-size 16"], result.output
