"""The benchmarks' one way to measure: run a command while sampling its process tree, wait for a quiet machine, time
a function (best of several runs), the machine's GEMM rate, and results cached as JSON.

A measured command (`run_measured`) records its wall seconds; the peaks over samples every `period` seconds of the
summed RSS of its process tree (Ray's processes and DataLoader workers included), split by role: the driver (the
command's own process), Ray actors (a process whose command line names one of ACTORS) and the rest; the most actors
seen; the largest RSS of one actor of each kind (`one_<kind>`); the driver's anonymous RSS (RSS less file-backed
pages: memory-mapped files). Peaks are kept per phase: "all", or "before" / "after" a marker file exists. Also
`others_cpu`, the share of the machine's CPU time during the run that processes outside the command's tree and this
one spent (the machine is shared), and the CPU seconds of the command's tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from xclr_prep.options import GraphOptions

ACTORS = ("EmbedWorker", "SearchWorker", "ShardWorker")  # the Ray actor classes a process tree is split into
ROLES = ("driver", "actors", "rest")
QUIET = 0.2  # a machine whose CPUs are at most this busy is quiet
CONTENDED = 0.2  # a run during which others took more of the CPU is measured again (least_contended)
GEMM_COLUMNS = 65_536
SEARCH_BLOCK = GraphOptions.block_size  # query rows of one exact-search block: xclr-prep graph's default


@dataclass(frozen=True)
class Measured:
    """One run of a command (module docstring). `peaks`: phase -> role ("total", ROLES, "n_actors", "driver_anon",
    "one_<kind>") -> bytes (or a count)."""

    command: list[str]
    wall_seconds: float
    peaks: dict[str, dict[str, int]]
    stdout: str
    others_cpu: float
    tree_cpu_seconds: float

    def peak(self, phase: str = "all", role: str = "total") -> int:
        return self.peaks[phase][role]


def _busy_cpu_seconds() -> float:
    """CPU seconds this machine has spent busy (not idle or waiting for I/O) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _sample_once(root: psutil.Process, cpu: dict[int, float]) -> dict[str, int]:
    """The summed RSS of `root`'s tree by role, the actor count, the largest actor of each kind and the driver's
    anonymous RSS, now; each process's CPU seconds go to `cpu` (pid -> seconds)."""
    got = {"total": 0, **dict.fromkeys(ROLES, 0), "n_actors": 0, "driver_anon": 0,
           **{f"one_{kind}": 0 for kind in ACTORS}}
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        tree = []
    for p in tree:
        try:
            with p.oneshot():
                mem, times, title = p.memory_info(), p.cpu_times(), " ".join(p.cmdline()[:1])
        except psutil.Error:  # gone, or a zombie
            continue
        kind = next((a for a in ACTORS if a in title), None)
        role = "driver" if p.pid == root.pid else "actors" if kind else "rest"
        got[role] += mem.rss
        got["n_actors"] += role == "actors"
        if kind:
            got[f"one_{kind}"] = max(got[f"one_{kind}"], mem.rss)
        if role == "driver":
            got["driver_anon"] = mem.rss - mem.shared
        cpu[p.pid] = times.user + times.system
    got["total"] = sum(got[role] for role in ROLES)
    return got


def _sample_tree(pid: int, marker: Path | None, period: float, stop: threading.Event,
                 peaks: dict[str, dict[str, int]], cpu: dict[int, float]) -> None:
    """Until `stop`: every `period` s sample the tree of `pid` and keep each figure's peak per phase in `peaks`."""
    root = psutil.Process(pid)
    while not stop.is_set():
        phase = "all" if marker is None else ("after" if marker.exists() else "before")
        now = _sample_once(root, cpu)
        got = peaks.setdefault(phase, dict.fromkeys(now, 0))
        for key, value in now.items():
            got[key] = max(got[key], value)
        stop.wait(period)


def run_measured(cmd: list[str], marker: Path | None = None, env: Mapping[str, str] | None = None,
                 period: float = 0.25, timeout: float | None = None) -> Measured:
    """Run `cmd` (environment `env`, default this one's) and measure it (module docstring); a failed command, or
    one still running after `timeout` seconds (then killed), stops the benchmark with the end of its stderr."""
    me = psutil.Process()
    busy0, me0 = _busy_cpu_seconds(), sum(me.cpu_times()[:2])
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peaks: dict[str, dict[str, int]] = {}
    cpu: dict[int, float] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_tree, args=(proc.pid, marker, period, stop, peaks, cpu), daemon=True)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:  # its workers too: they may hold the pipes
            workers = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            workers = []
        for w in workers:
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass
        proc.kill()
        stdout, stderr = proc.communicate()
        stop.set()
        raise SystemExit(f"command killed after {timeout:g} s: {' '.join(cmd)}\n{stderr[-4000:]}") from None
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{stderr[-4000:]}")
    own = sum(cpu.values()) + sum(me.cpu_times()[:2]) - me0
    others = max(0.0, _busy_cpu_seconds() - busy0 - own) / (wall * os.cpu_count())
    return Measured(cmd, wall, peaks, stdout, others, sum(cpu.values()))


def wait_quiet(limit: float = 900.0) -> float:
    """Wait (at most `limit` s) until the machine's CPUs were at most QUIET busy over 10 s (it is shared); return
    that busy fraction."""
    deadline = time.monotonic() + limit
    busy = psutil.cpu_percent(interval=10) / 100
    while busy > QUIET and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=10) / 100
    return busy


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The least wall seconds of `repeats` calls of `run`."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_flops(dim: int, block: int) -> float:
    """float32 FLOP/s of numpy's matmul of the exact search's shape, (block x dim) @ (dim x GEMM_COLUMNS): 2 block
    dim GEMM_COLUMNS flops over the best of 3 runs after a warm-up."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((block, dim), dtype=np.float32)
    b = rng.standard_normal((dim, GEMM_COLUMNS), dtype=np.float32)
    a @ b  # warm-up
    return 2 * block * dim * GEMM_COLUMNS / best_seconds(lambda: a @ b, 3)


def cached(path: Path, compute: Callable[[], dict]) -> dict:
    """The JSON at `path` if it exists; else `compute()`, written there (delete the file to compute it again)."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def least_contended(name: str, outputs: list[Path], measure: Callable[[], dict]) -> dict:
    """`measure()` (a record with "wall_seconds" and "others_cpu"), after removing `outputs` (a half-finished run's);
    a run under 10 minutes during which other processes took over CONTENDED of the machine's CPU is measured again,
    up to 3 times. Returns the least contended try as {"name", "cores", "tries", **record}."""
    tries: list[dict] = []
    while not tries or (len(tries) < 3 and tries[-1]["others_cpu"] > CONTENDED and tries[-1]["wall_seconds"] < 600):
        for out in outputs:
            shutil.rmtree(out, ignore_errors=True)
        print(f"measuring {name} ...", flush=True)
        tries.append(measure())
        print(f"  {name}: {tries[-1]['wall_seconds']:.1f} s, others' CPU {100 * tries[-1]['others_cpu']:.0f}%",
              flush=True)
    # the outputs left are the last try's: the same files whichever try is kept (the stages are deterministic)
    best = min(tries, key=lambda t: t["others_cpu"])
    return {"name": name, "cores": os.cpu_count(), "tries": len(tries), **best}
