"""A test object store: the fsspec filesystem ``flaky://``, a local directory (``flaky:///abs/path`` is /abs/path)
that fails a seeded fraction of its calls with a transient error, cuts a fraction of its reads short (the read
returns part of what was asked and the file then ends, as when a connection drops mid-body), or is down (fails
every call, or every call on some files). Every fault it injects is appended to a log file, so that a test counts
those of every process that used the store: the command, its Ray actors, its DataLoader workers.

The store's settings are the filesystem's keyword arguments (`Settings`), which fsspec reads from the environment
variable FSSPEC_FLAKY (fsspec's own configuration). `env()` gives that variable, and what makes the protocol known
to any Python process: PYTHONPATH holding this directory and a directory with a dist-info whose ``fsspec.specs``
entry point names `FlakyFileSystem` (fsspec's own plugin mechanism, read when fsspec is imported). A command that
joins a running Ray cluster passes them on to its actors as its job's runtime environment (`RAY_JOB_ENV`, the
variable `ray job submit --runtime-env-json` sets).
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "flaky"
CONFIG_VAR = "FSSPEC_FLAKY"
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
BLOCK = 1 << 18  # bytes of an open file that one request serves
FLAKY_CALLS = ("info", "ls", "cat_file", "get_file", "put_file", "mv", "makedirs", "_open")


@dataclass(frozen=True)
class Settings:
    """`fail`: the fraction of calls (and of reads of an open file) that raise a transient error; `short`: the
    fraction of reads cut short; `down`: every call on a path that ends with it fails ("": every call; None: none),
    or only the calls named in `down_calls` when it names any, once `down_after` such calls on the path have been
    answered in the process (counting those of the process it was forked from);
    `seed`: the faults' seed; `log`: the file each injected fault is appended to (one line: kind, process id, call,
    path)."""
    log: str
    fail: float = 0.0
    short: float = 0.0
    down: str | None = None
    down_calls: tuple[str, ...] = ()
    down_after: int = 0
    seed: str = "0"


class SlowDown(Exception):
    """An object store's HTTP 503 ("slow down"), as a client library without OSError raises it."""
    status = 503


def url(path: Path) -> str:
    return f"{PROTOCOL}://{Path(path).resolve()}"


def env(settings: Settings, plugin: Path) -> dict[str, str]:
    """The environment variables of a process that uses the store (`plugin`: a directory `write_plugin` wrote)."""
    own = {"PYTHONPATH": os.pathsep.join([str(plugin), str(Path(__file__).parent)]),
           CONFIG_VAR: json.dumps(asdict(settings))}
    return {**own, RAY_JOB_ENV: json.dumps({"runtime_env": {"env_vars": own}})}


def write_plugin(folder: Path) -> Path:
    """`folder` holding the dist-info that registers ``flaky://`` with fsspec; returns it."""
    info = folder / "flaky_store-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flaky-store\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[fsspec.specs]\n{PROTOCOL} = flaky_store:FlakyFileSystem\n")
    return folder


def injected(settings: Settings, pid: int | None = None) -> Counter[str]:
    """The faults injected so far, by kind ("transient", "short read", "down"), in every process (or in process
    `pid`)."""
    log = Path(settings.log)
    lines = [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    return Counter(kind for kind, by, *_ in lines if pid is None or int(by) == pid)


class FlakyFileSystem(LocalFileSystem):
    protocol = PROTOCOL

    def __init__(self, log: str = "", fail: float = 0.0, short: float = 0.0, down: str | None = None,
                 down_calls: tuple[str, ...] = (), down_after: int = 0, seed: str = "0", **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = Settings(log, float(fail), float(short), down, tuple(down_calls), int(down_after), str(seed))
        self._calls: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def count(self, call: str, path: str) -> int:
        """How many times this process has made `call` on `path`, this one included."""
        with self._lock:
            self._calls[call, path] += 1
            return self._calls[call, path]

    def roll(self, call: str, path: str) -> float:
        """A number in [0, 1), the same for the n-th `call` on a file of `path`'s name in every run with this seed
        (wherever the test's temporary directory is)."""
        n = self.count(call, path)
        return random.Random(f"{self.settings.seed}|{call}|{path.rstrip('/').rsplit('/', 1)[-1]}|{n}").random()

    def record(self, kind: str, call: str, path: str) -> None:
        with open(self.settings.log, "a") as f:
            f.write(f"{kind}\t{os.getpid()}\t{call}\t{path}\n")

    def fault(self, call: str, path: str) -> None:
        """Raise this call's injected transient error, if any."""
        s = self.settings
        if (s.down is not None and path.rstrip("/").endswith(s.down) and call in (s.down_calls or (call,))
                and self.count("down " + call, path) > s.down_after):
            self.record("down", call, path)
            raise ConnectionRefusedError(f"flaky: the store is down ({call} {path})")
        roll = self.roll(call, path)
        if roll < s.fail:
            self.record("transient", call, path)
            error = (ConnectionResetError, TimeoutError, SlowDown)[int(roll / s.fail * 3)]
            raise error(f"flaky: injected {error.__name__} ({call} {path})")

    def cut(self, call: str, path: str, data: bytes) -> bytes:
        """`data`, or a seeded prefix of it (a short read) for a fraction `short` of the calls."""
        roll = self.roll(call + " short", path)
        if not data or roll >= self.settings.short:
            return data
        self.record("short read", call, path)
        return data[:int(roll / self.settings.short * len(data))]

    def cat_file(self, path, start=None, end=None, **kwargs):
        self.fault("cat_file", str(path))
        with open(self._strip_protocol(path), "rb") as f:  # one call, one fault: not through the flaky _open
            f.seek(start or 0)
            data = f.read(-1 if end is None else end - (start or 0))
        return self.cut("cat_file", str(path), data)

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        self.fault("_open", str(path))
        opened = super()._open(path, mode=mode, block_size=block_size, **kwargs)
        return FlakyFile(self, str(path), opened) if mode == "rb" else opened


def _flaky(name: str):
    def call(self, path, *args, **kwargs):
        self.fault(name, str(path))
        return getattr(LocalFileSystem, name)(self, path, *args, **kwargs)

    call.__name__ = name
    return call


for _name in FLAKY_CALLS:
    if _name not in vars(FlakyFileSystem):
        setattr(FlakyFileSystem, _name, _flaky(_name))


class FlakyFile:
    """An open file of the store, read as an object store's reader reads, one ranged request per BLOCK bytes: a read
    that enters a block another request serves may fail like a call, or be cut short, and a short read ends the
    file."""

    def __init__(self, fs: FlakyFileSystem, path: str, file) -> None:
        self.fs, self.path, self.file = fs, path, file
        self.block: int | None = None
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        block = self.file.tell() // BLOCK
        request, self.block = block != self.block, block
        if request:
            self.fs.fault("read", self.path)
        if self.ended:
            return b""
        data = self.file.read(size)
        cut = self.fs.cut("read", self.path, data) if request else data
        self.ended = len(cut) < len(data)
        return cut

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> FlakyFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


fsspec.register_implementation(PROTOCOL, FlakyFileSystem, clobber=True)
