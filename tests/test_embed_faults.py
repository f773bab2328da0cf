"""Faults: kill -9 of the command, kill -9 of an actor, and a two-node Ray cluster on loopback.

Each run must end with the same embed directory as an uninterrupted run of the same corpus.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from conftest import assert_same_result, run_prep
from xclr_schemas import load_embed_dir

pytestmark = pytest.mark.slow
ARGS = ["--part-size", "150", "--batch-size", "32", "--no-progress"]
PARTS = 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, wordnet):
    path = tmp_path_factory.mktemp("corpus") / "wordnet.parquet"
    pq.write_table(wordnet.slice(0, 150 * PARTS), path)
    return path


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    run_prep("embed", corpus, "--out", out, *ARGS)
    d = load_embed_dir(out)
    assert len(d.manifest["parts"]) == PARTS
    return d


def start(corpus, out, *extra, env=None):
    cmd = [sys.executable, "-m", "xclr_prep", "embed", str(corpus), "--out", str(out), *ARGS, *extra]
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def wait_for_parts(proc, out: Path, n: int, timeout: float = 600) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sorted((out / "done").glob("*.json")) if (out / "done").exists() else []
        if len(done) >= n:
            return done
        if proc.poll() is not None:
            raise AssertionError(f"finished before {n} parts were done:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{n} parts not done within {timeout} s")


def test_kill_9_of_the_command_then_rerun(corpus, reference, tmp_path):
    out = tmp_path / "out"
    proc = start(corpus, out)
    wait_for_parts(proc, out, 3)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    survivors = {p.name: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")}
    assert 3 <= len(survivors) < PARTS and not (out / "manifest.json").exists()

    run_prep("embed", corpus, "--out", out, *ARGS)
    assert_same_result(load_embed_dir(out), reference)
    assert {n: (out / "done" / n).stat().st_mtime_ns for n in survivors} == survivors  # done parts not redone
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not (out / "scan").exists()


def test_an_actor_killed_mid_run_is_restarted_and_its_unit_retried(corpus, reference, tmp_path):
    out = tmp_path / "out"
    proc = start(corpus, out)
    wait_for_parts(proc, out, 2)
    actors = [p for p in psutil.Process(proc.pid).children(recursive=True)
              if p.cmdline() and p.cmdline()[0].startswith("ray::EmbedWorker")]
    assert len(actors) == 1
    actors[0].kill()
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    d = load_embed_dir(out)
    assert_same_result(d, reference)
    pids = {done_marker(p)["worker"]["pid"] for p in (out / "done").glob("*.json")}
    assert len(pids) == 2  # parts before the kill, and parts by the restarted actor


def done_marker(path: Path) -> dict:
    return json.loads(path.read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_ray_cluster_on_loopback(corpus, reference, tmp_path):
    """`ray start --head` + `ray start --address`, both on a loopback address, used through --ray-address.

    127.0.0.2 rather than 127.0.0.1: Ray rewrites 127.0.0.1 to the primary interface's address on Linux.
    Ray 2.5x clusters use token authentication, so every process runs with RAY_AUTH_MODE=token.
    """
    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    address = f"127.0.0.2:{free_port()}"
    common = ["--node-ip-address=127.0.0.2", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([ray, "start", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false",
                        *common], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([ray, "start", f"--address={address}", *common], env=env, check=True, capture_output=True,
                       timeout=120)
        out = tmp_path / "out"
        run_prep("embed", corpus, "--out", out, *ARGS, "--ray-address", address, "--num-workers", "2", env=env)
        # without --ray-address a stage starts its own local Ray, even while another runs on this machine
        alone = tmp_path / "alone"
        run_prep("embed", corpus, "--out", alone, *ARGS, env=env)
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
    d = load_embed_dir(out)
    assert_same_result(d, reference)
    nodes = [done_marker(p)["worker"]["node_id"] for p in (out / "done").glob("*.json")]
    assert len(set(nodes)) == 2  # both nodes did work
    assert d.manifest["run"]["workers"] == 2
    assert_same_result(load_embed_dir(alone), reference)
    assert not {done_marker(p)["worker"]["node_id"] for p in (alone / "done").glob("*.json")} & set(nodes)
