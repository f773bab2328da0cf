"""xclr-train under the faults of issue 34 beyond kill -9: a damaged latest.pt (cut short, one byte flipped), a
non-finite loss or weight, a full disk while a checkpoint is written, two commands on one run directory, and shards
changed under a running stream or between a kill and the resume. The runs are tiny (convnet, 16 px, batch 8, one step
an epoch) and run in this process where a subprocess is not the point; each fault goes into the session's ledger."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from fault_ledger import passes
from train_helpers import assert_same_state, train_in_process, train_metrics, train_samples_lost, untimed

from xclr_eval.cli import main as eval_command
from xclr_schemas import storage
from xclr_schemas.fashion_mnist import FASHION_MNIST_DIR
from xclr_schemas.out_lock import exclusive
from xclr_train.checkpoint import non_finite, read_checkpoint, read_latest
from xclr_train.cli import config_of
from xclr_train.cli import main as train_command
from xclr_train.data import InputChanged, Needs, Rows, ShardStream, find_shards, make_loader, shut_down, unchanged
from xclr_train.export import main as export_command
from xclr_train.preemption import Preemption
from xclr_train.train import train

STEPS, BATCH = 4, 8


def options(shards: Path, run: Path, steps: int = STEPS) -> list[str]:
    """The runs here: epochs of one step, latest.pt after each, epoch-0002.pt and epoch-0004.pt kept."""
    return ["--data", str(shards), "--out", str(run), "--arch", "convnet", "--image-size", "16", "--proj-hidden", "32",
            "--proj-dim", "16", "--batch-size", str(BATCH), "--steps", str(steps), "--samples-per-epoch", str(BATCH),
            "--save-every", "2", "--workers", "0", "--log-every", "1", "--no-progress"]


def one_line_error(result: Result) -> str:
    """The one "Error:" line of a command that exited with status 2."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and len(errors) == 1, (result.exit_code, result.output[-3000:])
    return errors[0]


def copy_shards(src: Path, dst: Path) -> Path:
    """The tars, sizes.json and manifest.json of a shards directory, copied with their times."""
    dst.mkdir()
    for path in src.iterdir():
        if path.suffix in (".tar", ".json"):
            shutil.copy2(path, dst / path.name)
    return dst


@pytest.fixture(scope="module")
def shards(tux_shards, tmp_path_factory) -> Path:
    """The session's tuxpaint shards, copied: a test here may change a tar (and puts it back)."""
    return copy_shards(tux_shards, tmp_path_factory.mktemp("faults") / "shards")


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("faults") / "whole"
    train_in_process(*options(shards, run))
    return run


class Crash(Exception):
    """Ends a run right after a checkpoint, in this process: what a kill -9 at that moment leaves."""


@pytest.fixture(scope="module")
def interrupted(shards, tmp_path_factory) -> Path:
    """The reference's command ended right after its third checkpoint: latest.pt at step 3, epoch-0002.pt at step 2,
    metrics to step 3. Tests copy it."""
    run = tmp_path_factory.mktemp("faults") / "interrupted"
    cfg = config_of(train_command.make_context("xclr-train", options(shards, run)).params)
    saves = []

    def crash_after_the_third() -> None:
        saves.append(len(saves))
        if len(saves) == 3:
            raise Crash

    with Preemption() as preemption, pytest.raises(Crash):
        train(cfg, preemption, after_save=crash_after_the_third)
    return run


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    """One byte in the middle of the file (tensor data) with its lowest bit flipped."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("kind, damage", [("truncated file", cut_in_half), ("flipped bits", flip_a_byte)])
def test_a_damaged_latest_is_named_and_the_resume_falls_back_to_an_intact_checkpoint(kind, damage, shards, reference,
                                                                                   interrupted, tmp_path, fault_ledger):
    """latest.pt damaged after a crash at step 3: xclr-export and xclr-eval refuse it in one line; --resume latest
    says so in one warning line, resumes from epoch-0002.pt (step 2), repeats step 3 and ends equal to the
    uninterrupted run (every checkpoint bit for bit, the metrics less their timings)."""
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    latest = run / "checkpoints" / "latest.pt"
    damage(latest)
    exported = CliRunner().invoke(export_command, [str(run), "--out", str(tmp_path / "export")])
    evaluated = CliRunner().invoke(eval_command, [str(latest), "--data", FASHION_MNIST_DIR, "--limit", "40", "--out",
                                                  str(tmp_path / "eval")])
    named = f"Error: {latest} is "
    assert one_line_error(exported).startswith(named) and one_line_error(evaluated).startswith(named)
    assert not (tmp_path / "export").exists() and not (tmp_path / "eval" / "results.json").exists()

    resumed = train_in_process(*options(shards, run), "--resume", "latest")
    warnings = [line for line in resumed.stderr.splitlines() if "warning" in line]
    fallback = run / "checkpoints" / "epoch-0002.pt"
    lines = train_metrics(run)
    survived = len(warnings) == 1 and passes(assert_same_state, read_checkpoint(latest),
                                             read_checkpoint(reference / "checkpoints" / "latest.pt"))
    fault_ledger.record(kind, f"train: latest.pt {damage.__name__.replace('_', ' ')} after a crash, --resume latest "
                        "falls back to epoch-0002.pt", survived=survived,
                        samples_lost=train_samples_lost(lines, STEPS, BATCH))
    assert len(warnings) == 1 and warnings[0].startswith(f"xclr-train: warning: {latest} is "), resumed.stderr
    assert warnings[0].endswith(f"; resuming from {fallback} (step 2) instead: step 3 is trained again")
    assert untimed(lines) == untimed(train_metrics(reference))
    for name in ("latest.pt", "epoch-0002.pt", "epoch-0004.pt"):
        assert_same_state(read_checkpoint(run / "checkpoints" / name),
                          read_checkpoint(reference / "checkpoints" / name), name)


def test_a_damaged_checkpoint_with_nothing_intact_to_fall_back_to_is_a_one_line_error(shards, interrupted, tmp_path):
    """latest.pt and epoch-0002.pt both damaged: --resume latest is refused in one line, nothing is trained; a
    damaged checkpoint named by --resume is refused too."""
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    for name in ("latest.pt", "epoch-0002.pt"):
        flip_a_byte(run / "checkpoints" / name)
    refused = one_line_error(train_in_process(*options(shards, run), "--resume", "latest", check=False))
    assert refused.startswith(f"Error: {run / 'checkpoints' / 'latest.pt'} is damaged: its content does not match")
    assert refused.endswith("and no intact epoch-NNNN.pt beside it to resume from: start the run again in a new --out")
    named = run / "checkpoints" / "epoch-0002.pt"
    assert one_line_error(train_in_process(*options(shards, run), "--resume", named, check=False)).startswith(
        f"Error: {named} is damaged")
    assert [x["step"] for x in train_metrics(run)] == [1, 2, 3]


def test_a_damaged_key_name_is_damage_and_a_missing_latest_falls_back_too(interrupted, tmp_path):
    """The digest cannot be dodged: latest.pt with its "sha256" key renamed (no digest, but keys only a digested
    checkpoint has) or its "model_config" key renamed (the digest covers the keys) is damaged, and --resume latest
    takes epoch-0002.pt; so it does when latest.pt is missing beside it (deleted, or a URL run killed between the
    uploads of epoch-0002.pt and latest.pt), instead of starting the run over."""
    epoch_2 = read_checkpoint(interrupted / "checkpoints" / "epoch-0002.pt")
    for key, said in ((b"sha256", "it has no SHA-256 digest but keys only a checkpoint with one has (inputs, sha257)"),
                      (b"model_config", "its content does not match the SHA-256 digest"), (None, "is missing")):
        folder = tmp_path / f"{key}" / "checkpoints"
        shutil.copytree(interrupted / "checkpoints", folder)
        latest = folder / "latest.pt"
        if key is None:
            latest.unlink()
        else:
            data = latest.read_bytes()
            assert data.count(key) == 1
            latest.write_bytes(data.replace(key, key[:-1] + bytes([key[-1] + 1])))
        found = read_latest(folder)
        assert found.path == folder / "epoch-0002.pt" and said in found.passed_over, (key, found.passed_over)
        assert_same_state(found.state, epoch_2)


@pytest.mark.slow
def test_a_non_finite_loss_or_weight_stops_the_run_before_any_checkpoint_of_it(shards, reference, tmp_path,
                                                                               fault_ledger):
    """--lr 1e30: the loss is NaN at step 2; the run stops with one line naming that step and the last good
    checkpoint (latest.pt, step 1), which stays the only one and is finite. A NaN BatchNorm running mean given by
    --init leaves every loss finite but not the state: the run stops before its first checkpoint."""
    run = tmp_path / "lr"
    error = one_line_error(train_in_process(*options(shards, run), "--lr", "1e30", check=False))
    latest = run / "checkpoints" / "latest.pt"
    state = read_checkpoint(latest)
    survived = (f"the loss was not finite (NaN or infinite) at step 2 of 4: stopped without saving; the last good "
                f"checkpoint is {latest} (step 1)" in error and state["step"] == 1 and non_finite(state) is None
                and os.listdir(latest.parent) == ["latest.pt"])
    fault_ledger.record("non-finite loss", "train --lr 1e30: NaN loss at step 2, stopped in one line, no checkpoint "
                        "after step 1", survived=survived)
    assert survived, error

    backbone = {k.removeprefix("backbone."): v for k, v in read_checkpoint(reference / "checkpoints" / "latest.pt")[
        "model"].items() if k.startswith("backbone.")}
    mean = next(k for k in backbone if k.endswith("running_mean"))
    backbone[mean] = torch.full_like(backbone[mean], float("nan"))
    torch.save(backbone, tmp_path / "init.pt")
    run = tmp_path / "init"
    error = one_line_error(train_in_process(*options(shards, run), "--init", tmp_path / "init.pt", check=False))
    stopped = error == (f"Error: model/backbone.{mean} is not finite after step 1 (every loss was): stopped without "
                        "saving; the last good checkpoint is none: no checkpoint was written before it")
    fault_ledger.record("non-finite loss", "train --init with a NaN BatchNorm mean: finite losses, state not finite, "
                        "stopped in one line before its first checkpoint",
                        survived=stopped and not any((run / "checkpoints").glob("*")))
    assert stopped, error
    assert not any((run / "checkpoints").glob("*"))


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a directory on a real tmpfs of `size` bytes (mounted again with the new size when called
    again); unmounted afterwards. Skips where this process may not mount (it needs root or CAP_SYS_ADMIN)."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = []

    def mount(size: int) -> Path:
        args = ["-t", "tmpfs", "-o", f"size={size}", "tmpfs"] if not mounted else ["-o", f"remount,size={size}"]
        proc = subprocess.run(["mount", *args, str(where)], capture_output=True, text=True)
        if proc.returncode and not mounted:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        assert proc.returncode == 0, proc.stderr
        mounted.append(size)
        return where

    yield mount
    if mounted:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.slow
def test_a_full_disk_while_a_checkpoint_is_written_then_a_resume_once_there_is_room(shards, reference, small_disk,
                                                                                   fault_ledger):
    """The run directory on a tmpfs with room for latest.pt and the logs but not for epoch-0002.pt beside them: one
    line, the previous latest.pt intact (its digest checked), no temporary file; after the tmpfs grows, --resume
    latest ends equal to the uninterrupted run."""
    size = (reference / "checkpoints" / "latest.pt").stat().st_size
    run = small_disk(size * 3 // 2) / "run"
    error = one_line_error(train_in_process(*options(shards, run), check=False))
    latest = run / "checkpoints" / "latest.pt"
    refused = (error.startswith(f"Error: could not write checkpoint {run / 'checkpoints' / 'epoch-0002.pt'}")
               and read_checkpoint(latest)["step"] == 1 and not list(run.rglob("*.tmp-*")))
    small_disk(size * 8)
    train_in_process(*options(shards, run), "--resume", "latest")
    lines = train_metrics(run)
    fault_ledger.record("disk full", "train: tmpfs full while epoch-0002.pt is written, one line, --resume latest "
                        "after it grows", survived=refused and passes(
                            assert_same_state, read_checkpoint(latest),
                            read_checkpoint(reference / "checkpoints" / "latest.pt")),
                        samples_lost=train_samples_lost(lines, STEPS, BATCH))
    assert refused, error
    assert untimed(lines) == untimed(train_metrics(reference))
    assert_same_state(read_checkpoint(latest), read_checkpoint(reference / "checkpoints" / "latest.pt"))


@pytest.mark.slow
def test_a_second_writer_is_refused_a_killed_one_leaves_no_lock_and_changed_shards_stop_the_resume(shards, tmp_path,
                                                                                                  fault_ledger):
    """A real xclr-train writes RUN: a second one on RUN is refused at once in one line, and the first goes on. Then
    the first is killed with kill -9 and a sample is appended to one of its shards: the resume is refused in one
    line naming the shard (the lock did not outlive its holder). The shard put back, RUN's lock is free."""
    run, steps = tmp_path / "run", 100_000
    proc = subprocess.Popen([sys.executable, "-m", "xclr_train", *options(shards, run, steps)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "latest.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        second = one_line_error(train_in_process(*options(shards, run, steps), "--resume", "latest", check=False))
        first_goes_on = proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    refused = second == (f"Error: {run} is being written by another command (it holds {run / '.lock'}); wait for it "
                         "to end or use another output")
    fault_ledger.record("two writers", "train: a second xclr-train on a running one's --out", survived=refused
                        and first_goes_on)
    assert refused and first_goes_on, second

    tar = shards / "shard-000001.tar"
    kept = tar.with_name("kept")
    os.replace(tar, kept)
    try:
        shutil.copyfile(kept, tar)
        with tarfile.open(tar, "a") as out:
            info = tarfile.TarInfo("appended.txt")
            info.size = 5
            out.addfile(info, io.BytesIO(b"extra"))
        changed = one_line_error(train_in_process(*options(shards, run, steps), "--resume", "latest", check=False))
    finally:
        os.replace(kept, tar)  # the original file: its size and mtime
    latest = run / "checkpoints" / "latest.pt"
    expected = f"Error: the shards changed since {latest} was written (shard-000001.tar: then"
    fault_ledger.record("input changed", "train: kill -9, a sample appended to a shard, --resume latest refused",
                        survived=changed.startswith(expected))
    assert changed.startswith(expected) and changed.endswith("put them back, or start a new run in another --out")
    with exclusive(run):
        pass


def first_error(batches, n: int) -> str:
    """The message of the InputChanged that one of the next `n` batches raises ("" if none does), kept apart from
    its traceback, which holds the DataLoader iterator and so its worker."""
    try:
        for _ in range(n):
            next(batches)
    except InputChanged as exc:
        return str(exc)
    return ""


def test_shards_rewritten_under_a_running_stream_are_refused(shards, tmp_path, fault_ledger):
    """A DataLoader worker streaming the shards, which are then rewritten (the same bytes, new files): the worker's
    next shard is refused, and the trainer gets the worker's one-line message."""
    data = copy_shards(shards, tmp_path / "shards")
    stream = ShardStream(find_shards(str(data)), 16, 8, "crop", Needs(), Rows(), seed=0, rank=0)
    batches = iter(make_loader(stream, workers=1, pin_memory=False))
    next(batches)
    for tar in sorted(data.glob("*.tar")):
        tar.write_bytes(tar.read_bytes())
    message = first_error(batches, 200)
    shut_down(batches)  # the worker ends now (the exception's traceback held the iterator; data.shut_down)
    refused = message.startswith(str(data)) and "changed while the run read it" in message and "\n" not in message
    fault_ledger.record("input changed", "train data: shards rewritten under a running DataLoader worker",
                        survived=refused)
    assert refused, message
    gone = data / "deleted.tar"  # a shard deleted since the run started: refused too, not a traceback
    gone.write_bytes(b"a shard")
    stamps = {str(gone): storage.stat_key(str(gone))}
    gone.unlink()
    with pytest.raises(InputChanged, match="now gone"):
        list(unchanged(stamps)(iter([str(gone)])))
