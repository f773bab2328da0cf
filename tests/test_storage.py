"""Paths as fsspec URLs: push/pull of work directories, reading through ``file://`` URLs (a real local fsspec
filesystem, the same code path as s3:// or gs://). The whole pipeline on URLs runs in test_storage_faults.py, on a
store that fails a fraction of its calls."""

from __future__ import annotations

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
