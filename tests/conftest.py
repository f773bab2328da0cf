"""Shared fixtures: the real packaged model, real WordNet captions, and running the real CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download; subprocesses inherit it


@pytest.fixture(scope="session")
def model_path() -> str:
    from xclr_schemas import default_caption_model

    return default_caption_model()


@pytest.fixture(scope="session")
def encoder(model_path):
    from xclr_prep.encoder import Encoder

    return Encoder(model_path, "cpu", batch_size=64)


@pytest.fixture(scope="session")
def wordnet():
    """The first 20k WordNet captions (key, caption) as a pyarrow Table."""
    from xclr_prep.sample_corpora import wordnet_captions

    return wordnet_captions(limit=20_000)


def run_prep(*args, check: bool = True, timeout: float = 900, **popen) -> subprocess.CompletedProcess:
    """Run the real `xclr-prep` command line in a subprocess."""
    cmd = [sys.executable, "-m", "xclr_prep", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(f"xclr-prep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    """A real tar with the given (member name, bytes), in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def assert_same_result(a, b) -> None:
    """Two loaded embed directories hold the same data (embeddings equal up to fp16 rounding)."""
    assert a.captions == b.captions
    assert a.samples.equals(b.samples)
    assert a.manifest["counts"] == b.manifest["counts"]
    assert a.manifest["parts"] == b.manifest["parts"]
    np.testing.assert_allclose(a.embeddings.astype(np.float32), b.embeddings.astype(np.float32), atol=2e-3)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="session")
def tux_embed(tmp_path_factory) -> Path:
    """Root holding ``tars`` (the real tuxpaint stamps as img2dataset tars, 100 per tar) and ``embed`` (their
    `xclr-prep embed` output with category labels)."""
    from xclr_prep.sample_corpora import write_tuxpaint_tars

    root = tmp_path_factory.mktemp("tux")
    write_tuxpaint_tars(root / "tars", per_tar=100)
    run_prep("embed", root / "tars", "--out", root / "embed", "--label-col", "label", "--no-progress")
    return root


@pytest.fixture(scope="session")
def tux_shards(tux_embed) -> Path:
    """Training shards of the tuxpaint stamps with caption embeddings (k 16, groups of 8, 200 samples a shard)."""
    out = tux_embed / "train-shards"
    run_prep("graph", tux_embed / "embed", "--out", out, "--k", "16", "--shard-samples", "200", "--with-embeddings",
             "--no-progress")
    return out


@pytest.fixture
def prep():
    return run_prep


REPO = Path(__file__).resolve().parents[1]


def tiny_png(i: int) -> bytes:
    """A real 4x4 PNG whose colour encodes `i`."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (i % 251, (i // 251) % 251, 7)).save(buf, format="PNG")
    return buf.getvalue()


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int = 0) -> np.ndarray:
    """n unit vectors around `clusters` random centres (float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_embed_dir(path: Path, embeddings: np.ndarray, parts: int = 2) -> None:
    """An embed directory laid out as `xclr-prep embed` writes it, holding the given vectors (float16), one sample
    per caption with a real PNG in ``path/images.tar``: test data whose geometry the test chooses."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from xclr_schemas import CAPTIONS_SCHEMA, EMBED_SCHEMA_VERSION, SAMPLES_SCHEMA, part_paths

    n, dim = embeddings.shape
    tar = path / "images.tar"
    path.mkdir(parents=True)
    write_tar(tar, [(f"s{i:06d}.png", tiny_png(i)) for i in range(n)])
    bounds = np.linspace(0, n, parts + 1).astype(int)
    manifest_parts = []
    for p, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        files = part_paths(path, p)
        for f in files.values():
            f.parent.mkdir(exist_ok=True)
        ids = np.arange(start, end, dtype=np.int64)
        np.save(files["embeddings"], embeddings[start:end].astype(np.float16))
        pq.write_table(pa.table({"caption_id": ids, "text": [f"caption {i}" for i in ids]}, schema=CAPTIONS_SCHEMA),
                       files["captions"])
        pq.write_table(pa.table({"key": [f"s{i:06d}" for i in ids], "caption_id": ids,
                                 "image_source": [str(tar)] * len(ids),
                                 "image_member": [f"s{i:06d}.png" for i in ids],
                                 "image_row": [-1] * len(ids), "label": [-1] * len(ids)}, schema=SAMPLES_SCHEMA),
                       files["samples"])
        files["done"].write_text("{}")
        manifest_parts.append({"index": p, "samples": int(end - start), "caption_start": int(start),
                               "caption_end": int(end)})
    manifest = {"schema_version": EMBED_SCHEMA_VERSION, "dtype": "float16", "classnames": None,
                "model": {"name": "synthetic", "dim": dim, "weights_sha256": "", "max_seq_length": 0},
                "counts": {"unique_captions": n, "kept": n}, "parts": manifest_parts}
    (path / "manifest.json").write_text(json.dumps(manifest))


def brute_force_topk(x: np.ndarray, k: int, queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids) of each query row's (default: every row's) k most similar other rows, by numpy, in float64."""
    x = x.astype(np.float64)
    queries = np.arange(len(x)) if queries is None else queries
    sims = x[queries] @ x.T
    sims[np.arange(len(queries)), queries] = -np.inf
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def assert_topk_equal(sims: np.ndarray, ids: np.ndarray, ref_sims: np.ndarray, ref_ids: np.ndarray,
                      atol: float = 1e-3) -> None:
    """Same neighbours up to ties (ids may differ only where the reference similarity is tied within atol at the
    k-th place) and similarities within atol."""
    np.testing.assert_allclose(sims, ref_sims, atol=atol)
    for row in range(len(ids)):
        differ = set(ids[row].tolist()) ^ set(ref_ids[row].tolist())
        if differ:
            kth = ref_sims[row, -1]
            assert all(abs(s - kth) <= atol for s in ref_sims[row][np.isin(ref_ids[row], list(differ))]), row


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


def torchrun_cmd(nproc: int, *args, max_restarts: int = 0) -> list[str]:
    """The real torchrun (single node, a local rendezvous) of `nproc` processes running `args`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", *map(str, args)]


def train_metrics(run: Path) -> list[dict]:
    """The lines of an `xclr-train` run's metrics.jsonl."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_samples_lost(lines: list[dict], steps: int, global_batch: int) -> int:
    """Training samples lost or repeated: the global batches of the steps 1..steps that metrics.jsonl (logged
    every step) misses or holds more than once."""
    return samples_lost(range(1, steps + 1), [x["step"] for x in lines]) * global_batch


# -- the inputs and uninterrupted references of the prep fault tests (test_embed_faults, test_graph_faults,
# -- test_cluster_faults): each is built once per session

EMBED_ARGS = ["--part-size", "150", "--batch-size", "32", "--no-progress"]
EMBED_PARTS = 20
GRAPH_ARGS = ["--block-size", "200", "--shard-samples", "60", "--k", "8", "--no-progress"]


@pytest.fixture(scope="session")
def embed_corpus(tmp_path_factory, wordnet) -> Path:
    """3000 WordNet captions in one Parquet table: EMBED_PARTS parts of 150 rows under EMBED_ARGS."""
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("corpus") / "wordnet.parquet"
    pq.write_table(wordnet.slice(0, 150 * EMBED_PARTS), path)
    return path


@pytest.fixture(scope="session")
def embed_reference(embed_corpus, tmp_path_factory):
    """The uninterrupted `xclr-prep embed` of embed_corpus (local Ray), loaded."""
    from xclr_schemas import load_embed_dir

    out = tmp_path_factory.mktemp("reference") / "out"
    run_prep("embed", embed_corpus, "--out", out, *EMBED_ARGS)
    d = load_embed_dir(out)
    assert len(d.manifest["parts"]) == EMBED_PARTS
    return d


@pytest.fixture(scope="session")
def graph_embed_dir(tmp_path_factory, wordnet) -> Path:
    """The embed directory of 3000 WordNet captions with tiny PNGs in 3 tars (15 search blocks, 50 shards under
    GRAPH_ARGS)."""
    root = tmp_path_factory.mktemp("graph-corpus")
    keys, captions = wordnet.column("key").to_pylist()[:3000], wordnet.column("caption").to_pylist()[:3000]
    for t in range(3):
        members = []
        for i in range(t * 1000, (t + 1) * 1000):
            members += [(f"{keys[i]}.png", tiny_png(i)), (f"{keys[i]}.txt", captions[i].encode())]
        write_tar(root / f"{t:05d}.tar", members)
    run_prep("embed", root, "--out", root / "embed", "--no-progress")
    return root / "embed"


@pytest.fixture(scope="session")
def graph_reference(graph_embed_dir, tmp_path_factory) -> Path:
    """The uninterrupted `xclr-prep graph` of graph_embed_dir under GRAPH_ARGS (local Ray)."""
    out = tmp_path_factory.mktemp("graph-reference") / "out"
    run_prep("graph", graph_embed_dir, "--out", out, *GRAPH_ARGS)
    return out


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


# -- a Ray cluster of several nodes on loopback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    """One `ray start --block` in a session of its own. Every process of the node (the raylet, its agents, the
    workers the raylet forks) belongs to that session, so `kill` takes down this node and nothing else: neither
    the other nodes on this machine nor any other Ray (`ray stop` would stop every Ray of the machine)."""

    def __init__(self, args: list[str], env: dict, log: Path, hide: Path | None = None) -> None:
        """`hide`: a directory this node sees empty (an empty tmpfs mounted over it in a mount namespace of the
        node's own, as a node without the shared filesystem would see it; needs root and unshare)."""
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block", *args]
        if hide is not None:
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'mount -t tmpfs none "{hide}" && exec "$0" "$@"', *cmd]
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(cmd, env=env, stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while b"block forever" not in log.read_bytes():  # printed once the node's processes are up
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def processes(self) -> list:
        import psutil

        found = []
        for p in psutil.process_iter():
            try:  # a killed process whose parent died too stays a zombie here: nothing left to kill
                if os.getsid(p.pid) == self.proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (OSError, psutil.Error):
                pass
        return found

    def kill(self) -> int:
        """kill -9 every process of the node (until none is left); how many there were."""
        import psutil

        killed: set[int] = set()
        for _ in range(100):
            procs = self.processes()
            if not procs:
                break
            for p in procs:
                try:
                    p.kill()
                    killed.add(p.pid)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.1)
        self.proc.wait()
        return len(killed)


class RayCluster:
    """A head and worker nodes on 127.0.0.2 (Ray rewrites 127.0.0.1 to the primary interface's address on Linux),
    with token authentication (Ray 2.5x clusters need RAY_AUTH_MODE=token in every process: use `env`), free ports
    and a temp dir of its own. Leaving the `with` block kills every node."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
        self.temp = tempfile.mkdtemp(prefix="xr-")  # short: Ray's socket paths must fit in 107 bytes
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []
        self.address = ""

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc) -> None:
        for node in [*self.workers, self.head]:
            if node is not None:
                node.kill()
        shutil.rmtree(self.temp, ignore_errors=True)

    def _node_args(self, cpus: int) -> list[str]:
        return ["--node-ip-address=127.0.0.2", f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats",
                f"--temp-dir={self.temp}", "--object-store-memory=200000000",
                f"--dashboard-agent-listen-port={free_port()}"]

    def start_head(self, cpus: int = 1) -> str:
        port = free_port()
        self.address = f"127.0.0.2:{port}"
        self.head = RayNode(["--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
                             f"--ray-client-server-port={free_port()}", *self._node_args(cpus)], self.env,
                            self.root / "head.log")
        return self.address

    def add_worker(self, cpus: int = 1, hide: Path | None = None) -> RayNode:
        node = RayNode([f"--address={self.address}", *self._node_args(cpus)], self.env,
                       self.root / f"worker-{len(self.workers)}.log", hide)
        self.workers.append(node)
        return node

    def wait_alive(self, n: int, timeout: float = 180) -> None:
        """Wait until the cluster counts n alive nodes (a killed node counts until its heartbeats are missed)."""
        code = ("import logging, sys, time, ray\n"
                f"ray.init(address={self.address!r}, logging_level=logging.ERROR)\n"
                f"deadline = time.monotonic() + {timeout}\n"
                f"while sum(node['Alive'] for node in ray.nodes()) != {n}:\n"
                "    if time.monotonic() > deadline:\n"
                "        sys.exit(f'{sum(node[\"Alive\"] for node in ray.nodes())} nodes alive')\n"
                "    time.sleep(0.5)\n")
        proc = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                              timeout=timeout + 60)
        assert proc.returncode == 0, f"not {n} alive nodes: {proc.stderr[-2000:]}"


# -- the fault ledger: what the fault tests injected and survived


def passes(check, *args) -> bool:
    """Whether `check(*args)` (an assert_* function) passes."""
    try:
        check(*args)
    except AssertionError:
        return False
    return True


def samples_lost(expected, got) -> int:
    """Samples of `expected` missing from `got`, plus the extra copies of samples `got` holds more than once."""
    got = list(got)
    return len(set(expected) - set(got)) + len(got) - len(set(got))


class FaultLedger:
    def __init__(self) -> None:
        self.faults: list[dict] = []

    def record(self, name: str, injected: int = 1, survived: bool = False, samples_lost: int = 0) -> None:
        """One test's fault(s): survived = the documented recovery ended equal to an uninterrupted run."""
        self.faults.append({"name": name, "injected": injected, "survived": injected if survived else 0,
                            "samples_lost": int(samples_lost)})

    def totals(self) -> dict:
        return {key: sum(f[key] for f in self.faults) for key in ("injected", "survived", "samples_lost")}


_LEDGER = pytest.StashKey[FaultLedger]()


def pytest_configure(config) -> None:
    config.stash[_LEDGER] = FaultLedger()


@pytest.fixture(scope="session")
def fault_ledger(pytestconfig) -> FaultLedger:
    return pytestconfig.stash[_LEDGER]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the ledger's totals when a fault test ran; write them as JSON to $XCLR_FAULT_REPORT when it is set."""
    ledger = config.stash.get(_LEDGER, None)
    report = os.environ.get("XCLR_FAULT_REPORT")
    if ledger is None or not (ledger.faults or report):
        return
    totals = ledger.totals()
    line = f"faults injected {totals['injected']}, survived {totals['survived']}, samples lost {totals['samples_lost']}"
    terminalreporter.write_sep("=", "fault injection")
    for f in ledger.faults:
        terminalreporter.write_line(f"{f['name']}: injected {f['injected']}, survived {f['survived']}, "
                                    f"samples lost {f['samples_lost']}")
    terminalreporter.write_line(line)
    if report:
        Path(report).write_text(json.dumps({**totals, "faults": ledger.faults}, indent=2) + "\n")
