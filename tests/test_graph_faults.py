"""kill -9 of `xclr-prep graph` while it searches and while it writes shards; reruns end byte-identical to an
uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_prep, tiny_png, write_tar
from xclr_schemas import read_shards_manifest

pytestmark = pytest.mark.slow
ARGS = ["--block-size", "200", "--shard-samples", "60", "--k", "8", "--no-progress"]


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory, wordnet):
    root = tmp_path_factory.mktemp("corpus")
    keys, captions = wordnet.column("key").to_pylist()[:3000], wordnet.column("caption").to_pylist()[:3000]
    for t in range(3):
        members = []
        for i in range(t * 1000, (t + 1) * 1000):
            members += [(f"{keys[i]}.png", tiny_png(i)), (f"{keys[i]}.txt", captions[i].encode())]
        write_tar(root / f"{t:05d}.tar", members)
    run_prep("embed", root, "--out", root / "embed", "--no-progress")
    return root / "embed"


def start(embed_dir, out):
    cmd = [sys.executable, "-m", "xclr_prep", "graph", str(embed_dir), "--out", str(out), *ARGS]
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when(proc, markers: Path, n: int, timeout: float = 600) -> None:
    """kill -9 the command and its local Ray once `markers` holds at least n done markers."""
    deadline = time.monotonic() + timeout
    while len(list(markers.glob("*.json")) if markers.exists() else []) < n:
        if proc.poll() is not None:
            raise AssertionError(f"finished before {n} markers:\n{proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{n} markers not written within {timeout} s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def snapshot(out: Path) -> dict:
    files = sorted(out.glob("shard-*.tar")) + [out / "sizes.json", out / "graph" / "neighbors.npy"]
    return {p.name: p.read_bytes() for p in files}


def test_kill_9_while_searching_and_while_writing_then_rerun(embed_dir, tmp_path):
    reference = tmp_path / "reference"
    run_prep("graph", embed_dir, "--out", reference, *ARGS)

    out = tmp_path / "out"
    kill_when(start(embed_dir, out), out / "graph" / "done", 3)
    blocks = len(list((out / "graph" / "done").glob("*.json")))
    assert 3 <= blocks < 15 and not (out / "graph" / "manifest.json").exists()

    kill_when(start(embed_dir, out), out / "done", 5)
    written = {p.name: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")}
    assert 5 <= len(written) < len(json.loads((reference / "sizes.json").read_text()))
    assert not (out / "manifest.json").exists()

    run_prep("graph", embed_dir, "--out", out, *ARGS)
    assert snapshot(out) == snapshot(reference)
    assert {n: (out / "done" / n).stat().st_mtime_ns for n in written} == written  # done shards not redone
    got, ref = read_shards_manifest(out), read_shards_manifest(reference)
    for key in ("counts", "groups"):
        assert got[key] == ref[key]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
