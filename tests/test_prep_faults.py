"""Faults of `xclr-prep embed` and `xclr-prep graph` beyond kill -9 (issue 34): a full disk (a real tmpfs as OUT),
two commands on one OUT, and inputs changed between a killed run and its rerun or under a running command.

Each test drives one stage through all three on the tuxpaint stamps: the first run fills the disk while a second
command asks for the same OUT; the disk is remounted larger (the same OUT with more room); a rerun is killed -9
while it holds OUT's lock; the inputs change and the next rerun is refused; they are put back and change again
under a running rerun, which writes no manifest; put back once more, the last rerun ends equal to the session's
clean run. The commands join the session's Ray (conftest.shared_ray); the ones refused before Ray starts run in
this process (prep_helpers.prep_error).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_ledger import samples_lost
from prep_helpers import (
    TUX_GRAPH_ARGS,
    Tmpfs,
    kill_session,
    lock_holders,
    prep_error,
    run_prep,
    shard_keys,
    shard_snapshot,
    start_prep,
    wait_for_lock,
    wait_for_markers,
)

from xclr_schemas import load_embed_dir, part_paths
from xclr_schemas.atomic import TMP_MARK, write_json_atomic
from xclr_schemas.out_lock import LOCK, exclusive

pytestmark = pytest.mark.slow
TUX_EMBED_ARGS = ["--label-col", "label", "--no-progress"]  # as conftest.tux_embed
BUSY = "is being written by another command"


def ended(proc) -> tuple[int, str]:
    """The exit status of `proc` once it ends, and its stderr."""
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def one_line_error(returncode: int, stderr: str) -> str:
    """The command's one-line error (exit 2, the last stderr line, no traceback anywhere), or '' when it is not."""
    lines = stderr.strip().splitlines()
    if returncode != 2 or "Traceback" in stderr or not lines or not lines[-1].startswith("xclr-prep: error: "):
        return ""
    return lines[-1]


def fill_while_a_second_asks(command: tuple, out: Path) -> tuple[str, str]:
    """Run `xclr-prep COMMAND` (writing OUT, on a disk too small) and, once it holds OUT's lock, the same command
    again in this process: the first's one-line error when it ends ('' if it is not one) and the second's."""
    first = start_prep(*command)
    wait_for_lock(first, out)
    second = prep_error(*command)
    return one_line_error(*ended(first)), second


def killed_holding_the_lock(command: tuple, out: Path) -> bool:
    """Start `xclr-prep COMMAND`, kill -9 it once it holds OUT's lock: whether the kernel dropped the lock."""
    holder = start_prep(*command)
    wait_for_lock(holder, out)
    kill_session(holder)
    return lock_holders(out / LOCK) == set()


def changed_under_a_run(command: tuple, change: Callable[[], None], started: Callable[[Popen], object]) -> str:
    """Start `xclr-prep COMMAND`, call `change` (of its inputs) once `started(the command)` returns (the command is
    past its checks of the inputs, which would refuse it at once): its one-line error when it ends ('' if it is not
    one)."""
    running = start_prep(*command)
    started(running)
    change()
    return one_line_error(*ended(running))


def disk_full(error: str, out: Path) -> bool:
    """Whether `error` is the one-line disk-full error, naming OUT and the space left there."""
    return f"no space left on the device of {out}" in error and "MB free there" in error


def record(fault_ledger, lost: int, *faults: tuple[str, str, int, dict[str, bool]]) -> list[str]:
    """Record each fault (kind, what, injected, its checks by name) in the ledger, survived when every check of it
    holds; returns the names of the checks that failed."""
    for kind, name, injected, checks in faults:
        fault_ledger.record(kind, name, injected=injected, survived=all(checks.values()), samples_lost=lost)
    return [check for *_, checks in faults for check, ok in checks.items() if not ok]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: its size and mtime."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def refused_writing_nothing(command: tuple, out: Path) -> str:
    """Run `xclr-prep COMMAND` in this process while this process holds OUT's lock: its one-line error if OUT's
    files are untouched, else ''."""
    before = tree(out)
    with exclusive(out):
        error = prep_error(*command)
    return error if tree(out) == before else ""


def without_source_dir(table):
    """A samples table with each image_source reduced to its file name (the corpus copy lives elsewhere)."""
    names = pa.array([Path(s).name for s in table.column("image_source").to_pylist()], pa.string())
    return table.set_column(table.schema.get_field_index("image_source"), "image_source", names)


def same_parts(out: Path, reference: Path, parts: list[int]) -> bool:
    """Embed parts `parts` of `out` hold what the reference's hold (embeddings up to fp16 rounding)."""
    for p in parts:
        got, ref = part_paths(out, p), part_paths(reference, p)
        if not (np.allclose(np.load(got["embeddings"]).astype(np.float32),
                            np.load(ref["embeddings"]).astype(np.float32), atol=2e-3)
                and pq.read_table(got["captions"]).equals(pq.read_table(ref["captions"]))
                and without_source_dir(pq.read_table(got["samples"])).equals(
                    without_source_dir(pq.read_table(ref["samples"])))):
            return False
    return True


def test_embed_disk_full_two_writers_and_a_changed_corpus(tux_embed, tmp_path, fault_ledger):
    """Two tars of the stamps (two parts) into a tmpfs with room for the plan, the scan and part 0 (about 130 KB
    of tmpfs pages), not for part 1's 67 KB of embeddings as well."""
    tars = sorted((tux_embed / "tars").glob("*.tar"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for tar in tars[:2]:
        shutil.copy2(tar, corpus / tar.name)
    reference = tux_embed / "embed"
    with Tmpfs(tmp_path / "disk", "160k") as disk:
        out = disk.path / "embed"
        command = ("embed", corpus, "--out", out, *TUX_EMBED_ARGS)
        full, busy = fill_while_a_second_asks(command, out)
        done = sorted(int(p.stem.split("-")[1]) for p in (out / "done").glob("*.json"))
        kept_whole = done == [0] and same_parts(out, reference, done)
        no_partial = all(np.load(p).shape[1] == 384 for p in (out / "embeddings").glob("*.npy")) and all(
            pq.read_table(p).num_rows > 0 for d in ("captions", "samples") for p in (out / d).glob("*.parquet"))
        no_manifest = not (out / "manifest.json").exists()
        writes_nothing = refused_writing_nothing(command, out)

        disk.grow("64m")
        lock_dropped = killed_holding_the_lock(command, out)
        shutil.copy2(tars[2], corpus / tars[2].name)  # a tar appended to the corpus
        appended = prep_error(*command)
        (corpus / tars[2].name).unlink()
        shutil.copyfile(tars[2], corpus / tars[1].name)  # a tar replaced
        replaced = prep_error(*command)
        shutil.copy2(tars[1], corpus / tars[1].name)  # put back as it was (content and mtime)
        touched, mtime = corpus / tars[0].name, (corpus / tars[0].name).stat().st_mtime_ns
        for marker in (out / "done").glob("*.json"):  # every part to embed again: changed while they are embedded
            marker.unlink()
        under = changed_under_a_run(command, lambda: os.utime(touched, ns=(mtime + 10**9, mtime + 10**9)),
                                    lambda running: wait_for_markers(running, out / "done", 1))
        no_manifest_under = not (out / "manifest.json").exists()
        os.utime(touched, ns=(mtime, mtime))

        run_prep(*command)
        d, ref = load_embed_dir(out), load_embed_dir(reference)
        parts = [p["index"] for p in d.manifest["parts"]]
        same = parts == [0, 1] and d.manifest["parts"] == ref.manifest["parts"][:2] and same_parts(out, reference,
                                                                                                    parts)
        expected = ref.samples.slice(0, sum(p["samples"] for p in d.manifest["parts"])).column("key").to_pylist()
        lost = samples_lost(expected, d.samples.column("key").to_pylist())
        clean = not [p for p in out.rglob(f"*{TMP_MARK}*")] and not (out / "scan").exists()
    failed = record(fault_ledger, lost, (
        "disk full", "embed: OUT a full tmpfs while writing parts; rerun once remounted larger", 1, {
            "one-line disk-full error naming OUT and its free space": disk_full(full, out),
            "the done part intact, nothing partial under a final name": kept_whole and no_partial and no_manifest,
            "rerun equals the clean run": same and clean and lost == 0}), (
        "two writers", "embed: a second command on a running OUT, then the lock of a kill -9'd one", 2, {
            "second embed refused at once while the first ran": BUSY in busy,
            "and wrote nothing": BUSY in writes_nothing,
            "a kill -9'd holder's lock dropped; the rerun ran": lock_dropped and same}), (
        "input changed", "embed: a corpus tar appended, then one replaced, between a kill -9 and the rerun; one "
        "rewritten under a running command", 3, {
            "a tar appended after a kill: refused, named": f"{corpus / tars[2].name} is new" in appended,
            "a tar replaced: refused, named": f"{corpus / tars[1].name} was modified (size" in replaced,
            "rewritten under a running embed: refused, no manifest": f"inputs changed while the command ran: "
            f"{touched} was modified" in under and no_manifest_under,
            "put back: the rerun equals the clean run": same}))
    assert not failed, (failed, full, busy, appended, replaced, under)


def test_graph_disk_full_two_writers_and_a_rewritten_embed_dir(tux_embed, tux_shards, tmp_path, fault_ledger):
    """The stamps' shards (four of 6-8 MB, two writers) into a tmpfs with room for about two."""
    embed = tmp_path / "embed"
    shutil.copytree(tux_embed / "embed", embed)
    original = json.loads((embed / "manifest.json").read_text())
    with Tmpfs(tmp_path / "disk", "16m") as disk:
        out = disk.path / "shards"
        command = ("graph", embed, "--out", out, *TUX_GRAPH_ARGS)
        full, busy = fill_while_a_second_asks(command, out)
        done = [json.loads(p.read_text())["name"] for p in (out / "done").glob("*.json")]
        present = [p.name for p in out.glob("shard-*.tar")]
        kept_whole = 0 < len(done) < 4 and set(done) <= set(present) and all(
            (out / name).read_bytes() == (tux_shards / name).read_bytes() for name in present)
        graph_kept = (out / "graph" / "neighbors.npy").read_bytes() == (tux_shards / "graph" / "neighbors.npy") \
            .read_bytes() and (out / "graph" / "manifest.json").exists() and not (out / "manifest.json").exists()

        disk.grow("64m")
        lock_dropped = killed_holding_the_lock(command, out)
        write_json_atomic(embed / "manifest.json", {**original, "created": "2000-01-01T00:00:00+00:00"})  # re-embedded
        rewritten = prep_error(*command)
        write_json_atomic(embed / "manifest.json", original)  # put back
        tar = Path(json.loads((embed / "plan.json").read_text())["inputs"][0]["path"])  # a corpus tar of embed's
        mtime = tar.stat().st_mtime_ns
        os.utime(tar, ns=(mtime + 10**9, mtime + 10**9))  # rewritten since embed: its images may be others
        corpus_changed = prep_error(*command)
        os.utime(tar, ns=(mtime, mtime))

        for marker in (out / "done").glob("*.json"):  # every shard to write again: changed while they are written
            marker.unlink()
        under = changed_under_a_run(command, lambda: write_json_atomic(
            embed / "manifest.json", {**original, "created": "2000-01-01T00:00:00+00:00"}),
            lambda running: wait_for_markers(running, out / "done", 1))
        no_manifest = not (out / "manifest.json").exists()
        write_json_atomic(embed / "manifest.json", original)

        run_prep(*command)
        same = shard_snapshot(out) == shard_snapshot(tux_shards)
        lost = samples_lost(shard_keys(tux_shards), shard_keys(out))
        clean = not [p for p in out.rglob(f"*{TMP_MARK}*")]
    failed = record(fault_ledger, lost, (
        "disk full", "graph: OUT a full tmpfs while writing shards; rerun once remounted larger", 1, {
            "one-line disk-full error naming OUT and its free space": disk_full(full, out),
            "done shards and the graph intact, no partial shard": kept_whole and graph_kept,
            "rerun equals the clean run": same and clean and lost == 0}), (
        "two writers", "graph: a second command on a running OUT, then the lock of a kill -9'd one", 2, {
            "second graph refused at once while the first ran": BUSY in busy,
            "a kill -9'd holder's lock dropped; the rerun ran": lock_dropped and same}), (
        "input changed", "graph: the embed directory rewritten between a kill -9 and the rerun, and under a running "
        "command; a corpus tar rewritten since embed", 3, {
            "embed dir rewritten after a kill: refused, named": f"{embed} was modified" in rewritten,
            "a corpus tar rewritten since embed: refused, named": f"the corpus of {embed} changed since it was "
            f"embedded: {tar} was modified" in corpus_changed,
            "rewritten under a running graph: refused, no manifest": "inputs changed while the command ran" in under
            and no_manifest,
            "put back: the rerun equals the clean run": same}))
    assert not failed, (failed, full, busy, rewritten, corpus_changed, under)
