"""Faults on clusters: a two-node Ray cluster on loopback (`ray start --head` + `ray start --address`, one CPU each)
under `xclr-prep embed` and `xclr-prep graph`, and a two-process torchrun (gloo) under `xclr-train`.

Injected: kill -9 of the driver (the xclr-prep command, not the cluster); kill -9 of the worker node (every process
of its `ray start`: raylet, agents, the actors on it); kill -9 of one training rank, then SIGSTOP of one (a hung
rank) in the same torchrun launch. The recovery is the documented one: a run that loses a node finishes on the nodes
left; a killed driver is rerun; for training, torchrun's elastic restart of the group with `--resume latest`, each
time. Each ends equal to an uninterrupted run, every sample present exactly once; every fault goes into the fault
ledger (tests/fault_ledger.py) with the samples lost, counted from the output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from data_helpers import assert_same_result
from fault_ledger import passes, samples_lost
from prep_helpers import (
    EMBED_ARGS,
    EMBED_PARTS,
    GRAPH_ARGS,
    kill_session,
    run_prep,
    shard_keys,
    shard_snapshot,
    start_prep,
    wait_for_markers,
)
from ray_cluster import RayCluster
from train_helpers import (
    assert_same_state,
    ranks_once_in_epoch,
    torchrun_cmd,
    train_metrics,
    train_samples_lost,
    untimed,
)

from xclr_schemas import load_embed_dir, read_shards_manifest
from xclr_schemas.out_lock import LOCK

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """The module's cluster: a head node, and worker nodes as the tests add them."""
    with RayCluster(tmp_path_factory.mktemp("cluster"), lost_node_s=6) as c:
        c.start_head(cpus=1)
        yield c


@pytest.fixture
def cluster(nodes: RayCluster) -> RayCluster:
    """The module's cluster with one worker node beside the head (a new one where a test lost the last)."""
    if not nodes.workers:
        nodes.add_worker(cpus=1)
    nodes.wait_alive(2)  # and a lost node marked dead
    return nodes


def start_logged(cmd: list, cluster: RayCluster, log: Path) -> subprocess.Popen:
    """Start `xclr-prep` against the cluster, its output to `log` (Ray's retry messages would fill a pipe)."""
    with open(log, "w") as f:
        return start_prep(*cmd, env=cluster.env, stdout=f, stderr=subprocess.STDOUT)


def lose_worker_node(cluster: RayCluster, proc: subprocess.Popen, markers: Path, n: int, log: Path) -> None:
    """kill -9 the worker node once `markers` holds n done markers: the run must finish on the head alone (the
    lost actor's units go to the head's actor)."""
    wait_for_markers(proc, markers, n)
    assert cluster.lose(cluster.workers[-1]) > 0
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}


def assert_identical_embed(d, reference) -> None:
    assert_same_result(d, reference)
    assert np.array_equal(d.embeddings, reference.embeddings)


def test_embed_on_two_nodes(cluster, embed_corpus, embed_reference, tmp_path):
    """`ray start --head` + `ray start --address` on a loopback address, joined through RAY_ADDRESS (as under `ray
    job submit`; the other tests pass --ray-address): both nodes do work, and the run ends with the embed directory
    of the reference run. (A command without either starts a local Ray of its own beside a running one:
    test_embed_faults.py, whose actor is the command's child.)"""
    out = tmp_path / "out"
    run_prep("embed", embed_corpus, "--out", out, *EMBED_ARGS, "--num-workers", "2",
             env={**cluster.env, "RAY_ADDRESS": cluster.address})
    d = load_embed_dir(out)
    assert_same_result(d, embed_reference)
    nodes = {json.loads(p.read_text())["worker"]["node_id"] for p in (out / "done").glob("*.json")}
    assert len(nodes) == 2  # both nodes did work
    assert d.manifest["run"]["workers"] == 2


STEPS, BATCH = 12, 8  # 2 ranks: global batches of 16, 2 steps an epoch, 6 epochs
TIMEOUT = 5  # --rank-timeout of the faulty run: seconds, not the default half hour
STOPPED = 0  # the hung rank: the main rank, which writes the checkpoints and holds the group's store


def train_args(shards, out: Path) -> list:
    """A metrics line every step, one DataLoader worker a rank, --resume latest (a new run at the first start)."""
    return ["-m", "xclr_train", "--data", shards, "--out", out, "--arch", "convnet", "--image-size", "16",
            "--no-progress", "--log-every", "1", "--batch-size", BATCH, "--steps", STEPS, "--samples-per-epoch", 32,
            "--workers", 1, "--loss", "supcon", "--resume", "latest"]


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def assert_hang_recovered(run: Path, whole: Path, log: str, ended: bool) -> None:
    """In `log` (torchrun's output from the SIGSTOP on): the other rank exited with status 2 after one line naming
    the timeout, and no traceback; torchrun restarted the group and had `ended` the stopped rank; the run ends with
    the uninterrupted run's checkpoint and metrics lines (less their timings)."""
    said = [line for line in log.splitlines() if "--rank-timeout" in line]
    assert len(said) == 1 and f"within --rank-timeout {TIMEOUT} s" in said[0], log[-5000:]
    assert "Traceback" not in log and f"exitcode: 2) local_rank: {1 - STOPPED} " in log, log[-5000:]
    assert "will restart worker group" in log and ended, log[-5000:]
    a = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(whole / "checkpoints" / "latest.pt", weights_only=True)
    for key in ("model", "method", "optimizer", "skipped", "step", "epoch"):
        assert_same_state(a[key], b[key], key)
    assert untimed(train_metrics(run)) == untimed(train_metrics(whole))


def test_a_killed_rank_then_a_hung_rank_torchrun_restarts_the_group_from_latest_each_time(tux_shards, tmp_path,
                                                                                         fault_ledger):
    """torchrun --nproc-per-node 2 --max-restarts 2 ... --rank-timeout 5 --resume latest over 6 epochs, two faults
    in one launch. kill -9 of rank 1 inside epoch 3: torchrun stops rank 0 and starts both again, which resume from
    latest.pt (the first start, with no checkpoint yet, is a new run). Then a hung rank: SIGSTOP of rank 0 of the
    restarted group inside epoch 5; rank 1's next collective waits past --rank-timeout (`xclr_train.distributed`)
    and it exits with one line naming the option; torchrun stops the group (SIGTERM, which a stopped process does
    not handle, then SIGKILL when its grace runs out: 30 s for a restart, fixed in torch 2.14's agent) and starts it
    again, from latest.pt. Every step's loss equals an uninterrupted two-process run's, each step is logged once, and
    the run ends with its checkpoint bit for bit. The uninterrupted run goes while the group waits out the timeout
    and torchrun's grace: its CPUs are idle then."""
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: torch 2.14's torchrun keeps one rendezvous store across restarts, and
    # the restarted ranks can read the addresses the killed group left there (pytorch/pytorch#135712): gloo then
    # fails with "connectFullMesh failed ... Connection refused" in 3 of 4 restarts here. INFO: torchrun logs its
    # restarts.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    run, whole, log = tmp_path / "faulty", tmp_path / "whole", tmp_path / "torchrun.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(torchrun_cmd(2, *train_args(tux_shards, run), "--rank-timeout", TIMEOUT,
                                             max_restarts=2), env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    spawned: list[psutil.Process] = []  # every rank and DataLoader worker seen, to clean up after a failure
    try:
        ranks = ranks_once_in_epoch(proc, run, log, 3)
        spawned += psutil.Process(proc.pid).children(recursive=True)
        ranks["1"].kill()
        assert not (run / "checkpoints" / "epoch-0006.pt").exists()  # killed before the run's end
        ranks = ranks_once_in_epoch(proc, run, log, 5)  # the restarted group's
        spawned += psutil.Process(proc.pid).children(recursive=True)
        stopped = ranks[str(STOPPED)]
        hung_from = log.stat().st_size
        stopped.suspend()  # SIGSTOP
        at = max(x["step"] for x in train_metrics(run))
        reference = subprocess.run(torchrun_cmd(2, *train_args(tux_shards, whole)), env=env, capture_output=True,
                                   text=True, timeout=300)
        assert reference.returncode == 0, reference.stderr[-5000:]
        assert proc.wait(timeout=180) == 0, log.read_text()[-5000:]
        ended = not stopped.is_running()  # torchrun's SIGTERM stays pending in a stopped process; its SIGKILL
    finally:
        if proc.poll() is None:
            spawned += psutil.Process(proc.pid).children(recursive=True)
            kill_all([psutil.Process(proc.pid), *spawned])
            proc.wait()
        kill_all(spawned)

    restarts = log.read_text().count("will restart worker group")  # the group, not the run finished by rank 0
    hang_log = log.read_bytes()[hung_from:].decode(errors="replace")
    lines, expected = train_metrics(run), [x["loss"] for x in train_metrics(whole)]
    assert len(expected) == STEPS
    same_losses = [x["loss"] for x in lines] == pytest.approx(expected, rel=1e-6)
    lost = train_samples_lost(lines, STEPS, 2 * BATCH)
    fault_ledger.record("kill -9", "train on 2 torchrun ranks: kill -9 of rank 1, elastic restart, --resume latest",
                        survived=restarts == 2 and same_losses, samples_lost=lost)
    fault_ledger.record("hung rank", f"train on 2 torchrun ranks: SIGSTOP of rank {STOPPED} after step {at}, the other "
                        f"out at --rank-timeout {TIMEOUT}, elastic restart, --resume latest",
                        survived=passes(assert_hang_recovered, run, whole, hang_log, ended) and lost == 0,
                        samples_lost=lost)
    assert restarts == 2, log.read_text()[-5000:]
    assert [x["step"] for x in lines] == list(range(1, STEPS + 1)) and lost == 0
    assert same_losses
    assert_hang_recovered(run, whole, hang_log, ended)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"epoch-{e:04d}.pt" for e in range(1, 7)] + [
        "latest.pt"]


def test_embed_on_two_nodes_killed_driver_and_lost_worker_node_then_rerun(cluster, embed_corpus, embed_reference,
                                                                          tmp_path, fault_ledger):
    """Kill -9 of the driver after 3 parts; the rerun loses the worker node 3 parts later and finishes on the head
    alone, with the embed directory of an uninterrupted run, bit for bit; a further rerun has nothing to do."""
    out = tmp_path / "out"
    cmd = ["embed", embed_corpus, "--out", out, *EMBED_ARGS, "--ray-address", cluster.address, "--num-workers", "2"]
    proc = start_logged(cmd, cluster, tmp_path / "killed-driver.log")
    wait_for_markers(proc, out / "done", 3)
    kill_session(proc)  # the driver only: the cluster runs on
    before = mtimes(out / "done")
    assert 3 <= len(before) < EMBED_PARTS and not (out / "manifest.json").exists()

    log = tmp_path / "lost-node.log"
    lose_worker_node(cluster, start_logged(cmd, cluster, log), out / "done", len(before) + 3, log)
    assert "already complete" in run_prep(*cmd, env=cluster.env).stdout  # a rerun has nothing left to do

    d = load_embed_dir(out)
    keys = pq.read_table(embed_corpus, columns=["key"]).column("key").to_pylist()
    lost = samples_lost(keys, d.samples.column("key").to_pylist())
    survived = passes(assert_identical_embed, d, embed_reference)
    fault_ledger.record("kill -9", "embed on 2 Ray nodes: kill -9 of the driver, rerun", survived=survived,
                        samples_lost=lost)
    fault_ledger.record("lost node", "embed on 2 Ray nodes: worker node lost, finished on the head", survived=survived,
                        samples_lost=lost)
    assert_identical_embed(d, embed_reference)
    assert lost == 0 and d.samples.num_rows == len(keys)
    counts = d.manifest["counts"]
    assert counts["input_rows"] == counts["kept"] + counts["skipped_total"] == len(keys)
    assert {n: t for n, t in mtimes(out / "done").items() if n in before} == before  # done parts not redone
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_graph_on_two_nodes_killed_driver_and_lost_worker_node_then_rerun(cluster, wordnet_embed_dir, graph_reference,
                                                                          tmp_path, fault_ledger):
    """Kill -9 of the driver while it searches; the rerun loses the worker node while it writes shards and finishes
    on the head alone, with the shards of an uninterrupted run, byte for byte; a further rerun has nothing to do."""
    out = tmp_path / "out"
    cmd = ["graph", wordnet_embed_dir, "--out", out, *GRAPH_ARGS, "--ray-address", cluster.address]
    proc = start_logged(cmd, cluster, tmp_path / "killed-driver.log")
    wait_for_markers(proc, out / "graph" / "done", 3)
    kill_session(proc)
    blocks = mtimes(out / "graph" / "done")
    assert 3 <= len(blocks) < 15 and not (out / "graph" / "manifest.json").exists()

    log = tmp_path / "lost-node.log"
    lose_worker_node(cluster, start_logged(cmd, cluster, log), out / "done", 5, log)
    assert "already complete" in run_prep(*cmd, env=cluster.env).stdout

    keys = load_embed_dir(wordnet_embed_dir).samples.column("key").to_pylist()
    got = shard_keys(out)
    lost = samples_lost(keys, got)
    survived = shard_snapshot(out) == shard_snapshot(graph_reference)
    fault_ledger.record("kill -9", "graph on 2 Ray nodes: kill -9 of the driver while searching, rerun",
                        survived=survived, samples_lost=lost)
    fault_ledger.record("lost node", "graph on 2 Ray nodes: worker node lost while writing, finished on the head",
                        survived=survived, samples_lost=lost)
    assert survived
    assert lost == 0 and len(got) == len(keys)
    manifest, reference = read_shards_manifest(out), read_shards_manifest(graph_reference)
    for key in ("counts", "groups"):
        assert manifest[key] == reference[key]
    assert manifest["counts"]["samples_in"] == manifest["counts"]["written"] + manifest["counts"]["skipped_total"]
    assert {n: t for n, t in mtimes(out / "graph" / "done").items() if n in blocks} == blocks  # not searched again
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_an_output_directory_that_a_node_cannot_see_is_refused(nodes, embed_corpus, tmp_path):
    """A node that does not mount the output's filesystem (it sees an empty directory there) joins: the run stops
    with a one-line error before any work, instead of leaving parts on that node where the driver never looks."""
    hidden = tmp_path / "not-shared"
    hidden.mkdir()
    node = nodes.add_worker(cpus=1, hide=hidden)
    try:
        nodes.wait_alive(len(nodes.workers) + 1)
        proc = run_prep("embed", embed_corpus, "--out", hidden / "out", *EMBED_ARGS, "--ray-address",
                        nodes.address, check=False, env=nodes.env)
    finally:
        nodes.lose(node)
    assert proc.returncode == 2 and "is not visible on Ray node" in proc.stderr.strip().splitlines()[-1]
    assert sorted(p.name for p in (hidden / "out").iterdir()) == [LOCK, "plan.json"]  # no work was done
