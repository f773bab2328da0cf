"""Running `xclr-prep` as a real command (to completion, or started and killed at a done marker), the fault tests'
options, and reading a shards directory back."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest


def local_ray_env() -> dict[str, str]:
    """This process's environment less RAY_ADDRESS: an `xclr-prep` command run in it starts a local Ray of its own
    instead of joining the session's (conftest.shared_ray)."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def run_prep(*args, check: bool = True, timeout: float = 900, **popen) -> subprocess.CompletedProcess:
    """Run the real `xclr-prep` command line in a subprocess."""
    cmd = [sys.executable, "-m", "xclr_prep", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(f"xclr-prep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


def prep_error(*args) -> str:
    """Run `xclr-prep ARGS` in this process, for a bad input refused before Ray starts (a new interpreter costs
    seconds of imports): its one-line error, checked to be the last line of stderr, with exit status 2."""
    from xclr_prep.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    lines = stderr.getvalue().strip().splitlines()
    assert exit_.value.code == 2 and lines, stderr.getvalue()
    assert lines[-1].startswith("xclr-prep: error: "), stderr.getvalue()
    return lines[-1]


def start_prep(*args, env=None, **popen) -> subprocess.Popen:
    """Start the real `xclr-prep` command line in its own session (kill it and its children with os.killpg)."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen([sys.executable, "-m", "xclr_prep", *map(str, args)], start_new_session=True, env=env,
                            **popen)


def wait_for_markers(proc: subprocess.Popen, folder: Path, n: int, timeout: float = 600) -> list[Path]:
    """Wait until `folder` holds at least n done markers (*.json) while `proc` runs; the markers."""
    deadline = time.monotonic() + timeout
    while True:
        markers = sorted(folder.glob("*.json")) if folder.exists() else []
        if len(markers) >= n:
            return markers
        if proc.poll() is not None:
            tail = proc.stderr.read()[-3000:] if proc.stderr else ""
            raise AssertionError(f"finished before {n} markers in {folder}:\n{tail}")
        assert time.monotonic() < deadline, f"{n} markers not in {folder} within {timeout} s"
        time.sleep(0.02)


def kill_session(proc: subprocess.Popen) -> None:
    """kill -9 a process started with start_new_session=True and every process of its group."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def shard_snapshot(out: Path) -> dict:
    """The bytes of a shards directory's tars, sizes.json and graph rows, by name."""
    files = sorted(out.glob("shard-*.tar")) + [out / "sizes.json", out / "graph" / "neighbors.npy"]
    return {p.name: p.read_bytes() for p in files}


def shard_keys(out: Path) -> list[str]:
    """The key of every sample in a shards directory's tars, in order (a key twice = a duplicated sample)."""
    keys: list[str] = []
    for path in sorted(out.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            previous = None
            for name in tar.getnames():
                key = name.split(".", 1)[0]  # keys hold no dots (embed enforces it)
                if key != previous:
                    keys.append(key)
                previous = key
    return keys


TUX_GRAPH_ARGS = ["--k", "16", "--shard-samples", "200", "--with-embeddings", "--no-progress"]


EMBED_PARTS, EMBED_PART_ROWS = 20, 75  # embed_corpus: 1500 captions
EMBED_ARGS = ["--image-col", "image", "--part-size", str(EMBED_PART_ROWS), "--batch-size", "32", "--no-progress"]


GRAPH_ARGS = ["--block-size", "100", "--shard-samples", "30", "--k", "8", "--no-progress"]


class Tmpfs:
    """A real tmpfs of `size` (mount(8) sizes: "4m") mounted at `path` for the body (a small disk to fill); `grow`
    remounts it larger, keeping its files (space freed on the same device). The test is skipped when this process
    may not mount (root or CAP_SYS_ADMIN is needed)."""

    def __init__(self, path: Path, size: str) -> None:
        self.path, self.size = path, size

    def __enter__(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
        return self

    def grow(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", "--lazy", str(self.path)], check=True)  # lazy: a failed test's command may live on


def lock_holders(path: Path) -> set[int]:
    """The pids holding a flock(2) on file `path` (from /proc/locks), without touching the lock."""
    if not path.exists():
        return set()
    st = path.stat()
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as locks:
        return {int(fields[4]) for fields in map(str.split, locks) if fields[1] == "FLOCK" and fields[5] == inode}


def wait_for_lock(proc: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    """Wait until the command `proc` holds OUT's lock (xclr_schemas.out_lock), i.e. has begun writing OUT."""
    from xclr_schemas.out_lock import LOCK

    deadline = time.monotonic() + timeout
    while proc.pid not in lock_holders(out / LOCK):
        if proc.poll() is not None:
            tail = proc.stderr.read()[-3000:]
            raise AssertionError(f"ended ({proc.returncode}) before it held {out / LOCK}:\n{tail}")
        assert time.monotonic() < deadline, f"{out / LOCK} not locked within {timeout} s"
        time.sleep(0.01)
