"""Faults: kill -9 of an actor, then of the command (two-node clusters: test_cluster_faults.py).

Each run must end with the same embed directory as an uninterrupted run of the same corpus.
"""

import json
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from data_helpers import assert_same_result
from fault_ledger import passes, samples_lost
from prep_helpers import EMBED_ARGS, EMBED_PARTS, kill_session, local_ray_env, run_prep, start_prep, wait_for_markers

from xclr_schemas import load_embed_dir

pytestmark = pytest.mark.slow
ARGS = EMBED_ARGS
PARTS = EMBED_PARTS


@pytest.fixture
def corpus(embed_corpus):
    return embed_corpus


@pytest.fixture
def reference(embed_reference):
    return embed_reference


def start(corpus, out):
    """The command with a local Ray of its own, which kill_session kills with it."""
    return start_prep("embed", corpus, "--out", out, *ARGS, env=local_ray_env())


def wait_for_parts(proc, out: Path, n: int, timeout: float = 600) -> list[Path]:
    return wait_for_markers(proc, out / "done", n, timeout)


def keys_lost(corpus, d) -> int:
    return samples_lost(pq.read_table(corpus, columns=["key"]).column("key").to_pylist(),
                        d.samples.column("key").to_pylist())


def test_an_actor_killed_then_the_command_killed_then_rerun(corpus, reference, tmp_path, fault_ledger):
    """kill -9 of the actor after 2 parts: Ray restarts it and its unit is retried. kill -9 of the command (and the
    local Ray it started) 3 parts later. The rerun does only the parts left and ends with the embed directory of an
    uninterrupted run. The command starts its Ray beside the session's running one (conftest.shared_ray) and does
    not join it: its one actor is the command's child."""
    out = tmp_path / "out"
    proc = start(corpus, out)
    wait_for_parts(proc, out, 2)
    actors = [p for p in psutil.Process(proc.pid).children(recursive=True)
              if p.cmdline() and p.cmdline()[0].startswith("ray::EmbedWorker")]
    assert len(actors) == 1
    actors[0].kill()
    wait_for_parts(proc, out, 5)
    kill_session(proc)
    survivors = {p.name: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")}
    assert 5 <= len(survivors) < PARTS and not (out / "manifest.json").exists()
    pids = {done_marker(out / "done" / name)["worker"]["pid"] for name in survivors}
    assert len(pids) == 2  # parts before the actor's kill, and parts by the restarted actor

    run_prep("embed", corpus, "--out", out, *ARGS)  # on the session's Ray: a rerun may run on any Ray
    d = load_embed_dir(out)
    survived, lost = passes(assert_same_result, d, reference), keys_lost(corpus, d)
    fault_ledger.record("kill -9", "embed: kill -9 of an actor, Ray restart", survived=survived, samples_lost=lost)
    fault_ledger.record("kill -9", "embed: kill -9 of the command (local Ray), rerun", survived=survived,
                        samples_lost=lost)
    assert_same_result(d, reference)
    assert {n: (out / "done" / n).stat().st_mtime_ns for n in survivors} == survivors  # done parts not redone
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not (out / "scan").exists()


def done_marker(path: Path) -> dict:
    return json.loads(path.read_text())
