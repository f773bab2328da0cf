"""`xclr-train` end to end on real shards (tuxpaint stamps through xclr-prep): learning, kill -9 and resume, and
every bad input of the issue giving a one-line error or a counted skip."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from click.testing import CliRunner
from train_helpers import takers, train_in_process, train_samples_lost
from train_helpers import train_metrics as metrics

from xclr_train.cli import main as train_command
from xclr_train.config import TrainConfig
from xclr_train.errors import TrainError

SMALL = ["--arch", "resnet18", "--image-size", "16", "--no-progress", "--log-every", "1"]


def run_train(*args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "xclr_train", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"xclr-train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


def rewrite_shards(src, dst, drop: str | None = None, unlabel: bool = False) -> None:
    """A copy of a shards directory whose tars lack the members ending in `drop` (and, with `unlabel`, the "label"
    of every KEY.json)."""
    dst.mkdir()
    for name in ("sizes.json", "manifest.json"):
        shutil.copy(src / name, dst / name)
    for tar_path in sorted(src.glob("*.tar")):
        with tarfile.open(tar_path) as inp, tarfile.open(dst / tar_path.name, "w") as out:
            for info in inp:
                if drop is not None and info.name.endswith(drop):
                    continue
                data = inp.extractfile(info).read()
                if unlabel and info.name.endswith(".json"):
                    data = json.dumps({k: v for k, v in json.loads(data).items() if k != "label"}).encode()
                    info.size = len(data)
                out.addfile(info, io.BytesIO(data))


@pytest.mark.slow
def test_a_short_real_run_decreases_the_loss(tux_shards, tmp_path):
    """X-CLR with sparse targets on the tuxpaint stamps: the loss falls, and neighbours meet in the batch."""
    run = tmp_path / "run"
    train_in_process("--data", tux_shards, "--out", run, *SMALL, "--arch", "convnet", "--batch-size", "32", "--steps",
                     "30", "--workers", "1", "--samples-per-epoch", "320")
    lines = metrics(run)
    assert [x["step"] for x in lines] == list(range(1, 31))
    first, last = [x["loss"] for x in lines[:5]], [x["loss"] for x in lines[-5:]]
    assert sum(last) / 5 < sum(first) / 5 - 0.1, (first, last)
    # groups of 8 from the graph: an anchor meets several graph neighbours in its batch (random batches: ~0.5)
    assert sum(x["graph_hits"] for x in lines) / len(lines) > 3
    assert all(0 < x["target_same_caption"] < 1 and x["target_entropy"] > 0 for x in lines)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"epoch-{e:04d}.pt" for e in (1, 2, 3)] + [
        "latest.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["moco", "byol", "nnclr", "xclr", "siglip"])
def test_frameworks_and_queued_xclr_learn_on_real_shards(tux_shards, tmp_path, loss):
    """A short run of each framework (and X-CLR with a queue, and SigLIP) on the tuxpaint stamps: once the 64-entry
    queue holds real entries (after 2 batches), the loss falls; X-CLR's queue adds graph neighbours beyond the
    batch; SigLIP's temperature and bias move from their initial 10 and -10."""
    run = tmp_path / "run"
    queue = [] if loss in ("byol", "siglip") else ["--queue-size", "64"]
    train_in_process("--data", tux_shards, "--out", run, *SMALL, "--arch", "convnet", "--image-size", "32", "--loss",
                     loss, *queue, "--batch-size", "32", "--steps", "30", "--workers", "1", "--samples-per-epoch",
                     "320")
    losses = [x["loss"] for x in metrics(run)]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    early, late = sum(losses[2:10]) / 8, sum(losses[-8:]) / 8
    assert late < early - 0.05, losses
    if loss == "xclr":
        hits = [x["graph_hits_queue"] for x in metrics(run)]
        assert hits[0] == 0 and sum(hits[2:]) / 28 > 2, hits  # empty at the first step, then neighbours
    if loss == "siglip":
        first, last = metrics(run)[0], metrics(run)[-1]
        assert (first["siglip_t"], first["siglip_b"]) == pytest.approx((10.0, -10.0))
        assert last["siglip_t"] != pytest.approx(10.0) and last["siglip_b"] != pytest.approx(-10.0), last


@pytest.mark.slow
def test_a_siglip_resume_restores_its_learned_temperature_and_bias(tux_shards, tmp_path):
    """2 epochs of 2 steps of SigLIP: resumed from epoch 1's checkpoint, the run starts epoch 2 with the temperature
    and bias the uninterrupted run had then (bit for bit), and its steps give the same losses."""
    args = ["--data", tux_shards, *SMALL, "--arch", "convnet", "--loss", "siglip", "--batch-size", "16", "--steps",
            "4", "--samples-per-epoch", "32", "--workers", "1"]
    whole, run = tmp_path / "whole", tmp_path / "resumed"
    train_in_process(*args, "--out", whole)
    shutil.copytree(whole, run)
    train_in_process(*args, "--out", run, "--resume", run / "checkpoints" / "epoch-0001.pt")
    reference, resumed = metrics(whole), metrics(run)
    assert [x["step"] for x in resumed] == [1, 2, 3, 4]
    assert reference[2]["siglip_t"] != reference[0]["siglip_t"]  # trained in epoch 1, so the restore shows
    assert (resumed[2]["siglip_t"], resumed[2]["siglip_b"]) == (reference[2]["siglip_t"], reference[2]["siglip_b"])
    assert [x["loss"] for x in resumed] == pytest.approx([x["loss"] for x in reference], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--loss", "triplet", "--mining", "semihard", "--positives", "graph"],
                                  ["--loss", "contrastive", "--positives", "label"],
                                  ["--loss", "npair"]])
def test_metric_learning_losses_run_on_real_shards(tux_shards, tmp_path, args):
    """triplet, contrastive and npair through the whole trainer, with each kind of positives: graph positives
    find the grouped neighbours, label positives the stamp's category, caption positives just the other view."""
    run = tmp_path / "run"
    train_in_process("--data", tux_shards, "--out", run, *SMALL, "--arch", "convnet", "--image-size", "32", *args,
                     "--batch-size", "32", "--steps", "4", "--workers", "1", "--samples-per-epoch", "128")
    lines = metrics(run)
    assert len(lines) == 4 and all(math.isfinite(x["loss"]) and x["loss"] > 0 for x in lines)
    positives = sum(x["positives"] for x in lines) / 4
    if "--positives" in args:
        assert positives > 2, positives  # neighbour groups of 8 / categories of a few stamps share the batch
    else:
        assert positives < 1.5, positives  # distinct captions: the other view, rarely a duplicate caption


@pytest.mark.slow
def test_kill_9_then_resume_repeats_the_uninterrupted_run(tux_shards, tmp_path, fault_ledger):
    """MoCo, 4 epochs of 2 steps: killed during epoch 3 and resumed from latest, the losses of every step equal an
    uninterrupted run's, and the metrics log holds each step once; its momentum network and queue come back from
    the epoch checkpoint too (X-CLR's queue after a stop signal: test_train_preemption.py; every objective's state
    round trip: test_objective_state.py)."""
    args = ["--data", tux_shards, *SMALL, "--arch", "convnet", "--batch-size", "16", "--steps", "8",
            "--samples-per-epoch", "32", "--workers", "2", "--loss", "moco", "--queue-size", "24"]
    train_in_process(*args, "--out", tmp_path / "whole")
    reference = [x["loss"] for x in metrics(tmp_path / "whole")]

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "xclr_train", *map(str, args), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "epoch-0002.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    while len(metrics(run)) < 5:  # inside epoch 3, past its first step
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / "epoch-0004.pt").exists()

    refused = train_in_process(*args, "--out", run, check=False)
    assert refused.exit_code == 2 and "--resume latest" in refused.stderr
    train_in_process(*args, "--out", run, "--resume", "latest")
    lines = metrics(run)
    fault_ledger.record("kill -9", "train moco: kill -9 of the command, --resume latest",
                        survived=[x["loss"] for x in lines] == pytest.approx(reference, rel=1e-6),
                        samples_lost=train_samples_lost(lines, 8, 16))
    assert [x["step"] for x in lines] == list(range(1, 9))
    assert [x["loss"] for x in lines] == pytest.approx(reference, rel=1e-6)


def test_bad_input_gets_a_one_line_error(tux_shards, tmp_path):
    """Each bad option or data set: exit status 2 and one "Error:" line naming it. The cases run in-process
    (click's runner); the first also as a real command, which proves the status and that no traceback is printed."""
    empty = tmp_path / "empty"
    empty.mkdir()
    no_nbr, no_emb = tmp_path / "no-nbr", tmp_path / "no-emb"
    rewrite_shards(tux_shards, no_nbr, drop=".nbr.npy")
    rewrite_shards(tux_shards, no_emb, drop=".emb.npy")
    no_label = tmp_path / "no-label"
    rewrite_shards(tux_shards, no_label, unlabel=True)
    cases = [
        (["--data", empty], f"no shards in {empty}"),
        (["--data", tmp_path / "missing-{000..003}.tar"], "4 of 4 shards do not exist"),
        (["--data", no_nbr], "--loss xclr with sparse targets needs KEY.nbr.npy in every sample"),
        (["--data", no_emb, "--targets", "dense"], "--targets dense needs KEY.emb.npy"),
        (["--data", no_emb, "--loss", "clip"], "--loss clip needs KEY.emb.npy"),
        (["--data", tux_shards, "--samples-per-epoch", "8", "--batch-size", "16"], "less than one global batch"),
        (["--data", tux_shards, "--precision", "bf16", "--device", "cpu"], "--precision bf16 needs a GPU"),
        (["--data", no_nbr, "--loss", "triplet", "--positives", "graph"], "--positives graph needs KEY.nbr.npy"),
        (["--data", no_label, "--loss", "supcon", "--positives", "label"], '--positives label needs a "label" in'),
        (["--data", tux_shards, "--loss", "simclr", "--queue-size", "8"],
         f"--queue-size is for --loss {takers('queue_size')}, not simclr"),
        (["--data", tux_shards, "--loss", "moco", "--margin", "0.3"], f"--margin is for --loss {takers('margin')}"),
        (["--data", tux_shards, "--loss", "simclr", "--positives", "label"],
         f"--positives is for --loss {takers('positives')}"),
        (["--data", tux_shards, "--loss", "byol", "--tau", "0.2"], f"--tau is for --loss {takers('tau')}, not byol"),
        (["--data", tux_shards, "--loss", "moco", "--queue-size", "0"], "--queue-size must be positive for --loss"),
        (["--data", tux_shards, "--queue-size", "-1"], "--queue-size must be 0 or more for --loss xclr, got -1"),
        (["--data", tux_shards, "--loss", "simclr", "--tau", "0"], "--tau must be positive for --loss simclr"),
        (["--data", tux_shards, "--tau-s", "-0.1"], "--tau-s must be positive for --loss xclr, got -0.1"),
        (["--data", tux_shards, "--loss", "triplet", "--margin", "0"], "--margin must be positive for --loss triplet"),
        (["--data", tux_shards, "--loss", "byol", "--momentum", "1"], "--momentum must be in [0, 1) for --loss byol"),
        (["--data", tux_shards, "--targets", "dense", "--queue-size", "8"], "--queue-size with --loss xclr needs"),
        (["--data", tux_shards, "--floor", "none", "--calibrate", "background"], "--floor none is for --loss xclr "),
        (["--data", tux_shards, "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--data", tux_shards, "--workers", "-1"], "--workers must be 0 or more, got -1"),
        (["--data", tux_shards, "--lr", "1e39"], "--lr must be 0 or more and at most 3.4e38"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(train_command, [*map(str, args), "--out", str(tmp_path / "run"), *SMALL])
        assert result.exit_code == 2, (args, result.output[-2000:], result.exception)
        error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(error) == 1 and message in error[0], (args, result.output[-2000:])
    proc = run_train(*cases[0][0], "--out", tmp_path / "run", *SMALL, check=False, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("Error:")] == [f"Error: {cases[0][1]}"]


def test_a_train_config_checks_itself_when_built():
    """From Python as from the command line: a value out of its range or choices, or a bad option of the objective,
    is a one-line TrainError when the TrainConfig is built."""
    cases = [({"image_size": 0}, "--image-size must be at least 1, got 0"),
             ({"steps": -2}, "--steps must be at least 1, got -2"),
             ({"optimizer": "sgd"}, "--optimizer must be one of lars, adamw, got 'sgd'"),
             ({"loss": "simclr", "loss_options": {"tau": 0.0}}, "--tau must be positive for --loss simclr, got 0.0"),
             ({"loss": "simclr", "loss_options": {"margin": 0.5}}, "--margin is for --loss "),
             ({"loss": "hinge"}, "--loss must be one of ")]
    for options, message in cases:
        with pytest.raises(TrainError) as error:
            TrainConfig("shards", "run", **options)
        assert message in str(error.value) and "\n" not in str(error.value), options
    assert TrainConfig("shards", "run", steps=None).objective_args().tau_s == 0.1  # None: not given


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only user errors (TrainError) become one line: a ValueError from a bug (here planted where the shards are
    listed) reaches the caller as itself, with its traceback."""
    def broken(*args, **kwargs):
        raise ValueError("a planted bug")
    monkeypatch.setattr("xclr_train.train.find_shards", broken)
    result = CliRunner().invoke(train_command, ["--data", str(tmp_path), "--out", str(tmp_path / "run"), *SMALL])
    assert isinstance(result.exception, ValueError) and str(result.exception) == "a planted bug", result.output
    assert "Error:" not in result.stderr


@pytest.mark.slow
def test_truncated_tar_is_skipped_and_counted(tux_shards, tmp_path):
    data = tmp_path / "data"
    rewrite_shards(tux_shards, data)
    shard = sorted(data.glob("*.tar"))[1]
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    run = tmp_path / "run"
    train_in_process("--data", data, "--out", run, *SMALL, "--arch", "convnet", "--batch-size", "16", "--steps", "12",
                     "--samples-per-epoch", "192", "--workers", "1", "--seed", "3")
    last = metrics(run)[-1]
    assert last["skipped_truncated_shard"] >= 1
    assert last["skipped_incomplete_sample"] >= last["skipped_truncated_shard"]
    assert last["skipped_undecodable_image"] == last["skipped_bad_member"] == 0


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_refused(tux_shards, tmp_path):
    run = tmp_path / "run"
    common = ["--data", tux_shards, "--no-progress", "--image-size", "16", "--batch-size", "8", "--steps", "1",
              "--samples-per-epoch", "8", "--workers", "0"]
    train_in_process(*common, "--out", run, "--arch", "resnet18")
    proc = train_in_process(*common, "--out", tmp_path / "other", "--arch", "resnet50", "--resume",
                            run / "checkpoints" / "latest.pt", check=False)
    assert proc.exit_code == 2
    assert "holds another model: arch=resnet18 (this run: resnet50)" in proc.stderr
    changed = train_in_process(*common, "--out", run, "--arch", "resnet18", "--resume", "latest", "--tau", "0.2",
                               "--augment", "crop", check=False)
    assert "was trained with other options: augment='simclr' (now 'crop'), tau=0.1 (now 0.2)" in changed.stderr
