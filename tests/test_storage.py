"""Paths as fsspec URLs: push/pull of work directories, and the whole pipeline through ``file://`` URLs (a real
local fsspec filesystem, the same code path as s3:// or gs://) giving what it gives on local paths."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from prep_helpers import run_prep

from xclr_schemas import storage
from xclr_schemas.out_lock import LOCK as OUT_LOCK


def tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_push_publishes_data_before_markers_before_the_manifest_and_pull_restores(tmp_path):
    """A stage directory's data before its markers; a run's metrics log and config before the checkpoint that
    vouches for them (a run killed between the uploads must not resume from a checkpoint whose log is missing)."""
    local = tmp_path / "work"
    data_files = {"part-0.parquet": b"rows", "sub/emb.npy": b"vectors", "metrics.jsonl": b'{"step": 4}\n'}
    files = {**data_files, "checkpoints/latest.pt": b"weights", "done/part-0.json": b"{}", "plan.json": b"{}",
             "manifest.json": b"{\"complete\": 1}"}
    for rel, data in files.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    (local / "part-1.parquet.tmp-0123").write_bytes(b"half")  # a killed writer's leftover
    (local / OUT_LOCK).write_bytes(b"")  # this machine's output lock (xclr_schemas.out_lock)
    url = (tmp_path / "remote").as_uri()

    assert storage.push(local, url) == len(files)
    remote = tmp_path / "remote"
    assert tree(remote) == files  # no temporaries, no push record, no lock
    order = sorted(files, key=lambda rel: (remote / rel).stat().st_mtime_ns)
    assert {*order[:len(data_files)]} == {*data_files}
    assert order[-2:] == ["checkpoints/latest.pt", "manifest.json"]

    assert storage.push(local, url) == 0  # nothing changed
    (local / "part-0.parquet").write_bytes(b"more rows")
    assert storage.push(local, url) == 1 and (remote / "part-0.parquet").read_bytes() == b"more rows"

    elsewhere = tmp_path / "elsewhere"
    (remote / OUT_LOCK).write_bytes(b"")  # as an older xclr pushed it
    storage.pull(url, elsewhere)
    assert not (elsewhere / OUT_LOCK).exists()
    (remote / OUT_LOCK).unlink()
    assert {k: v for k, v in tree(elsewhere).items() if k != storage.PUSHED} == tree(remote)
    assert storage.push(elsewhere, url) == 0  # what was pulled is not pushed back


def test_reading_through_a_url(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "a.tar").write_bytes(b"0123456789")
    (tmp_path / "d" / "e" / "b.parquet").write_bytes(b"x")
    url = (tmp_path / "d").as_uri()
    assert storage.find_files(url) == [f"{url}/a.tar", f"{url}/e/b.parquet"]
    assert storage.find_files(f"{url}/*.tar") == [f"{url}/a.tar"]
    assert storage.read_range(f"{url}/a.tar", 3, 4) == b"3456"
    with storage.open_input(f"{url}/a.tar") as f:
        f.seek(8)
        assert f.read() == b"89"
    assert storage.file_size(f"{url}/a.tar") == 10 and storage.is_dir(url) and not storage.exists(f"{url}/zz")


def run_cli(module: str, *args, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **env})
    assert proc.returncode == 0, f"{module} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_the_pipeline_on_urls_equals_the_pipeline_on_local_paths(tux_embed, tux_shards, tmp_path):
    """embed -> graph -> train -> (resume on another machine) -> eval, every input and output a file:// URL.
    The embed directory and the shards equal the local run's; a second machine (a fresh work directory) resumes
    the run from what the first published."""
    from xclr_schemas import load_embed_dir
    from xclr_train.checkpoint import read_checkpoint

    bucket = tmp_path / "bucket"
    shutil.copytree(tux_embed / "tars", bucket / "corpus")
    url = bucket.as_uri()
    machine_a = {"XCLR_WORK_DIR": str(tmp_path / "work-a")}

    run_prep("embed", f"{url}/corpus", "--out", f"{url}/embed", "--label-col", "label", "--no-progress",
             env={**os.environ, **machine_a})
    ours, theirs = load_embed_dir(bucket / "embed"), load_embed_dir(tux_embed / "embed")
    assert ours.captions == theirs.captions and (ours.embeddings == theirs.embeddings).all()
    assert ours.manifest["counts"] == theirs.manifest["counts"]
    assert ours.samples.drop(["image_source"]).equals(theirs.samples.drop(["image_source"]))
    assert all(s.startswith(f"{url}/corpus/") for s in ours.samples.column("image_source").to_pylist())

    run_prep("graph", f"{url}/embed", "--out", f"{url}/shards", "--k", "16", "--shard-samples", "200",
             "--with-embeddings", "--no-progress", env={**os.environ, **machine_a})
    tars = sorted(p.name for p in tux_shards.glob("*.tar"))
    assert sorted(p.name for p in (bucket / "shards").glob("*.tar")) == tars
    assert all((bucket / "shards" / t).read_bytes() == (tux_shards / t).read_bytes() for t in tars)
    assert (bucket / "shards" / "sizes.json").read_text() == (tux_shards / "sizes.json").read_text()

    # machine A is killed once it has published its first checkpoint; machine B resumes from the bucket
    train = ["--data", f"{url}/shards", "--out", f"{url}/run", "--arch", "convnet", "--image-size", "16",
             "--batch-size", "16", "--samples-per-epoch", "64", "--epochs", "3", "--no-progress", "--log-every", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "xclr_train", *train], env={**os.environ, **machine_a},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    published = bucket / "run" / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 600
    while not published.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_checkpoint(published)["step"] < 12, "the run ended before it could be killed"
    run_cli("xclr_train", *train, "--resume", "latest", env={"XCLR_WORK_DIR": str(tmp_path / "work-b")})
    steps = [json.loads(line)["step"] for line in (bucket / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # resumed from the published checkpoint: nothing repeated, nothing lost

    run_cli("xclr_eval", f"{url}/run/checkpoints/latest.pt", "--data", f"{url}/corpus", "--out", f"{url}/eval",
            env=machine_a)
    results = json.loads((bucket / "eval" / "results.json").read_text())
    pngs = sum(name.endswith(".png") for t in (bucket / "corpus").glob("*.tar") for name in tarfile.open(t).getnames())
    assert results["runs"]["run"]["step"] == 12 and results["images"] == pngs
    assert (bucket / "eval" / "plots" / "training-run.png").is_file()
