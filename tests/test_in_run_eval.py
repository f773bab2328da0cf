"""In-run evaluation (`xclr-train --eval-data --eval-queries --eval-every`, `xclr_train.in_run_eval`) on real shards
and real eval sets (the tuxpaint stamps): its lines come at the asked steps and equal what `xclr-eval` computes on the
checkpoint of that step; a run with it trains bit for bit as one without; two torchrun ranks finish with it, the
other rank waiting out an evaluation longer than its process group's timeout (the two-rank run is on a single
shard: test_train_ddp's case of more ranks than shards); a set it cannot use is a one-line error before any step."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from data_helpers import write_tar
from train_helpers import assert_same_state, torchrun_cmd, train_in_process, train_metrics, untimed

from xclr_eval.cli import main as eval_command
from xclr_train.eval_metrics import split

RUN = ["--arch", "convnet", "--image-size", "16", "--proj-hidden", "32", "--proj-dim", "16", "--batch-size", "16",
       "--samples-per-epoch", "32", "--workers", "0", "--log-every", "1", "--no-progress"]


def xclr_eval(out, *args) -> dict:
    """results.json's runs of `xclr-eval ARGS --out OUT --no-clustering --no-linear-probe` (the trainer's in-run
    evaluation has neither), run in this process."""
    result = CliRunner().invoke(eval_command, [*map(str, args), "--out", str(out), "--no-clustering",
                                               "--no-linear-probe"])
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads((out / "results.json").read_text())["runs"]


def eval_lines(run) -> list[dict]:
    return [line for line in train_metrics(run) if "eval/knn_accuracy" in line]


def test_the_split_is_scikit_learns_stratified_split():
    """xclr_train.eval_metrics.split draws what scikit-learn's train_test_split(stratify=...) draws, so that the
    trainer splits as xclr-eval always has without importing scikit-learn."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(0)
    for seed in range(40):
        classes = int(rng.integers(2, 12))
        labels = rng.permutation(np.repeat(np.arange(classes), rng.integers(2, 25, size=classes)))
        db, q = train_test_split(np.arange(len(labels)), test_size=0.5, random_state=seed, stratify=labels)
        got = split(labels, seed)
        np.testing.assert_array_equal(got[0], np.sort(db))
        np.testing.assert_array_equal(got[1], np.sort(q))


@pytest.mark.slow
def test_eval_lines_equal_xclr_eval_and_leave_training_bit_identical(tux_shards, stamps_third, tmp_path):
    """--eval-every 2 over 5 steps, one set split (a third of the stamps, conftest.stamps_third): lines at steps 2,
    4 and the end (5), once each, a rerun of the finished run included; each kNN accuracy is xclr-eval's on the
    checkpoint of that step, on every image of the set; the weights, optimizer and training lines equal a run
    without evaluation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = stamps_third
    with tarfile.open(data / "00000.tar") as tar:
        images = sum(name.endswith(".png") for name in tar.getnames())
    plain, evaluated = tmp_path / "plain", tmp_path / "evaluated"
    train_in_process("--data", tux_shards, "--out", plain, *RUN, "--steps", "5")
    train_in_process("--data", tux_shards, "--out", evaluated, *RUN, "--steps", "5", "--eval-data", data,
                     "--eval-every", "2")

    lines = eval_lines(evaluated)
    assert [line["step"] for line in lines] == [2, 4, 5]
    train_in_process("--data", tux_shards, "--out", evaluated, *RUN, "--steps", "5", "--eval-data", data,
                     "--eval-every", "2", "--resume", "latest")  # a rerun of the finished run adds no line
    assert eval_lines(evaluated) == lines
    training = [line for line in train_metrics(evaluated) if "loss" in line]
    assert untimed(training) == untimed(train_metrics(plain))
    assert_same_state(torch.load(plain / "checkpoints" / "latest.pt", weights_only=True),
                      torch.load(evaluated / "checkpoints" / "latest.pt", weights_only=True))

    runs = xclr_eval(tmp_path / "ev", evaluated / "checkpoints" / "epoch-0001.pt",
                     evaluated / "checkpoints" / "latest.pt", "--data", data)
    by_step = {r["step"]: r for r in runs.values()}
    assert {step: by_step[step]["metrics"]["knn_accuracy"] for step in (2, 5)} == \
        {line["step"]: line["eval/knn_accuracy"] for line in lines if line["step"] in (2, 5)}
    assert all(line["eval/images"] == by_step[5]["images"] == images for line in lines)
    assert "eval/caption_R@1" not in lines[0]  # one set, split: no caption retrieval, as in xclr-eval

    events = EventAccumulator(str(evaluated / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("eval/knn_accuracy")] == [2, 4, 5]
    assert [e.value for e in events.Scalars("eval/knn_accuracy")] == pytest.approx(
        [line["eval/knn_accuracy"] for line in lines])


def one_shard(shards: Path, out: Path) -> Path:
    """A shards directory holding the first shard of `shards` alone."""
    out.mkdir()
    first = sorted(shards.glob("shard-*.tar"))[0]
    (out / first.name).symlink_to(first)
    sizes = json.loads((shards / "sizes.json").read_text())
    (out / "sizes.json").write_text(json.dumps({first.name: sizes[first.name]}))
    (out / "manifest.json").symlink_to(shards / "manifest.json")
    return out


@pytest.mark.slow
def test_two_torchrun_ranks_on_a_single_shard_with_held_out_queries(tux_shards, captioned, tmp_path):
    """Two CPU ranks, evaluating after every step against held-out (mirrored) queries: the run finishes, the main
    rank logs kNN accuracy and caption R@1 at each step, and they are xclr-eval --queries' on the last checkpoint.
    The run is also test_train_ddp's case of more ranks (x workers: two each) than shards, on a single shard:
    resampling feeds every rank over three epochs, nothing hangs, metrics come from rank 0."""
    db, queries = captioned
    run = tmp_path / "run"
    proc = subprocess.run(torchrun_cmd(2, "-m", "xclr_train", "--data", one_shard(tux_shards, tmp_path / "one-shard"),
                                       "--out", run, *RUN, "--batch-size", "8", "--steps", "3", "--samples-per-epoch",
                                       "16", "--workers", "2", "--eval-data", db, "--eval-queries", queries,
                                       "--eval-every", "1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    training = [line for line in train_metrics(run) if "loss" in line]
    assert [x["step"] for x in training] == [1, 2, 3]
    assert all(x["samples_per_s"] > 0 and x["graph_hits"] > 0 for x in training)
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    lines = eval_lines(run)
    assert [line["step"] for line in lines] == [1, 2, 3]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank ran: the same reduction order, the same features
    try:
        last = xclr_eval(tmp_path / "ev", run / "checkpoints" / "latest.pt", "--data", db, "--queries", queries)
    finally:
        torch.set_num_threads(threads)
    (metrics,) = [r["metrics"] for r in last.values()]
    assert (lines[-1]["eval/knn_accuracy"], lines[-1]["eval/caption_R@1"]) == \
        (metrics["knn_accuracy"], metrics["caption_R@1"])


WAIT_SCRIPT = """
import sys, time
from datetime import timedelta
from pathlib import Path
import torch, torch.distributed as dist
from xclr_train.config import TrainConfig
from xclr_train.distributed import Dist
from xclr_train.in_run_eval import InRunEval
from xclr_train.metrics_log import MetricsLog
from xclr_train.models import Encoder, ModelConfig

dist.init_process_group("gloo", timeout=timedelta(seconds=3))
rank = dist.get_rank()
cfg = TrainConfig(data="unused", out="unused", arch="convnet", image_size=16, eval_data=sys.argv[1],
                  eval_queries=sys.argv[2])
evaluator = InRunEval(cfg, Dist(rank, 2, rank, torch.device("cpu")))
if rank == 0:
    time.sleep(5)  # an evaluation longer than the process group's timeout
log = MetricsLog(Path(sys.argv[3]), 0) if rank == 0 else None
evaluator.evaluate(1, Encoder(ModelConfig("convnet", 16, 32, 16, None)), log)
dist.all_reduce(torch.ones(1))  # the training group still works
print(f"rank {rank} waited", flush=True)
"""


@pytest.mark.slow
def test_other_ranks_wait_out_an_evaluation_longer_than_the_process_group_timeout(captioned, tmp_path):
    """Under a process group with a 3 s timeout, the main rank's evaluation takes over 5 s: the other rank waits for
    it (a wait in a collective of the training group would fail after 3 s) and the training group works after."""
    script = tmp_path / "wait.py"
    script.write_text(WAIT_SCRIPT)
    proc = subprocess.run(torchrun_cmd(2, script, *captioned, tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 0 waited" in proc.stdout and "rank 1 waited" in proc.stdout, proc.stdout
    assert "eval/knn_accuracy" in (tmp_path / "metrics.jsonl").read_text()


def test_an_eval_set_it_cannot_use_is_a_one_line_error_before_any_step(tux_shards, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "classnames.txt").write_text("a\nb\n")
    write_tar(broken / "00000.tar", [m for i in range(6) for m in (
        (f"{i:04d}.png", b"not a png"), (f"{i:04d}.json", json.dumps({"label": i % 2}).encode()))])
    cases = {broken: f"--eval-data: none of the 6 images of {broken} decodes",
             tmp_path / "missing": f"--eval-data: {tmp_path / 'missing'} is not an evaluation set"}
    for data, message in cases.items():
        run = tmp_path / f"run-{data.name}"
        result = train_in_process("--data", tux_shards, "--out", run, *RUN, "--steps", "2", "--eval-data", data,
                                  check=False)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.exit_code == 2 and len(errors) == 1 and errors[0].startswith(f"Error: {message}"), \
            result.output[-2000:]
        assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
