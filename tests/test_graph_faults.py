"""kill -9 of `xclr-prep graph` (and the local Ray it started) while it writes shards; the rerun ends byte-identical
to an uninterrupted run. (A kill while it searches: test_cluster_faults.py.)"""

import json
from pathlib import Path

import pytest
from fault_ledger import samples_lost
from prep_helpers import (
    GRAPH_ARGS,
    kill_session,
    local_ray_env,
    run_prep,
    shard_keys,
    shard_snapshot,
    start_prep,
    wait_for_markers,
)

from xclr_schemas import load_embed_dir, read_shards_manifest

pytestmark = pytest.mark.slow
ARGS = GRAPH_ARGS


def start(embed_dir, out):
    return start_prep("graph", embed_dir, "--out", out, *ARGS, env=local_ray_env())


def kill_when(proc, markers: Path, n: int, timeout: float = 600) -> None:
    """kill -9 the command and its local Ray once `markers` holds at least n done markers."""
    wait_for_markers(proc, markers, n, timeout)
    kill_session(proc)


def test_kill_9_while_writing_then_rerun(wordnet_embed_dir, graph_reference, tmp_path, fault_ledger):
    embed_dir, reference = wordnet_embed_dir, graph_reference
    out = tmp_path / "out"
    kill_when(start(embed_dir, out), out / "done", 5)
    written = {p.name: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")}
    assert 5 <= len(written) < len(json.loads((reference / "sizes.json").read_text()))
    assert not (out / "manifest.json").exists()

    run_prep("graph", embed_dir, "--out", out, *ARGS, env=local_ray_env())
    fault_ledger.record("kill -9", "graph: kill -9 of the command (local Ray) while writing, rerun",
                        survived=shard_snapshot(out) == shard_snapshot(reference),
                        samples_lost=samples_lost(load_embed_dir(embed_dir).samples.column("key").to_pylist(),
                                                  shard_keys(out)))
    assert shard_snapshot(out) == shard_snapshot(reference)
    assert {n: (out / "done" / n).stat().st_mtime_ns for n in written} == written  # done shards not redone
    got, ref = read_shards_manifest(out), read_shards_manifest(reference)
    for key in ("counts", "groups"):
        assert got[key] == ref[key]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
