"""Where xclr reads and writes: local paths, or fsspec URLs (``s3://``, ``gs://``, ``file://`` ...) anywhere a
stage takes a path.

Reading goes through fsspec directly: `open_input` streams a file (object stores serve it with range requests),
`read_range` reads one byte range (a shard writer's image), `find_files` expands directories and globs.

Writing a directory at a URL goes through a local *work directory* (`work_dir`), because the stages rely on
local atomic renames and in-place writes. The stage runs on the work directory exactly as on a local output,
inside `local_dir(url)`, which

- `pull`s first: copies every remote file that the work directory lacks, so a rerun on another machine resumes
  from what an earlier run published;
- `push`es after the stage, also when it fails, and whenever the stage calls it (e.g. after a checkpoint):
  uploads every file that changed since its last push, data files first, then the files that vouch for data:
  JSON files (plans, done markers), then a run's checkpoints (each vouches for the run's config and its metrics
  log up to its step), then the top-level ``manifest.json``. Each upload goes to a temporary name that is then
  moved into place, so a remote file under its final name is complete, and a remote marker, checkpoint or
  manifest is never ahead of the data it vouches for. A run killed mid-push leaves the remote in a state a
  rerun may trust.

Work directories live under ``$XCLR_WORK_DIR`` (default ``~/.cache/xclr/work``), one per URL. On a multi-node
Ray cluster, the actors write into the work directory, so it must be on a filesystem every node mounts (as a
local output directory must). The files that belong to one machine's work directory (`LOCAL_ONLY`: the push record,
the output lock of `xclr_schemas.out_lock`) are never pushed or pulled.

Every call on a URL follows `xclr_schemas.retry`: a transient error or a short read is retried with backoff, and a
store that keeps failing ends the command with one line naming the URL (StorageError) after a bounded time. A file
exists, or is a directory, only when the store says so, and a listing holds every file: an error is never taken
for "no such file" (as fsspec's generic ``exists``, ``isdir`` and ``find`` take it).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import fsspec
from fsspec.utils import glob_translate

from xclr_schemas import retry
from xclr_schemas.atomic import TMP_MARK, atomic_path, write_json_atomic
from xclr_schemas.names import CHECKPOINTS, MANIFEST
from xclr_schemas.out_lock import LOCK

PUSHED = ".pushed.json"  # in a work directory: size and mtime of each file as last pushed or pulled
LOCAL_ONLY = (PUSHED, LOCK)  # top-level files of a work directory that are never pushed or pulled


def is_url(path: str | os.PathLike) -> bool:
    """True for ``protocol://...`` (fsspec handles it); False for a local path."""
    return "://" in str(path)


def join(root: str | os.PathLike, *names: str) -> str:
    """`root`/`names`, for a local path or a URL."""
    return posixpath.join(str(root), *names) if is_url(root) else os.path.join(root, *names)


def parent(path: str | os.PathLike) -> str:
    """The directory of `path`, for a local path or a URL."""
    return str(path).rstrip("/").rsplit("/", 1)[0] if is_url(path) else os.path.dirname(path)


def basename(path: str | os.PathLike) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url)


def open_input(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for binary reading: a local file, or a URL's file read under `xclr_schemas.retry` (seekable;
    a transient error or a read cut short reopens it where it was). FileNotFoundError when there is none."""
    if not is_url(path):
        return open(path, "rb")
    url = str(path)
    fs, p = _fs(url)
    return io.BufferedReader(retry.Reader(url, lambda: fs.open(p, "rb"), int(_existing(url)["size"])))


def _info(url: str) -> dict | None:
    """The store's description of `url` (fsspec ``info``: "type", "size" ...), None when there is none."""
    fs, p = _fs(url)
    try:
        return retry.call(url, lambda: fs.info(p))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _existing(url: str) -> dict:
    """`_info` of a URL that must exist: FileNotFoundError when it does not."""
    info = _info(url)
    if info is None:
        raise FileNotFoundError(url)
    return info


def _is(path: str | os.PathLike, local: Callable[[str | os.PathLike], bool], kind: str | None) -> bool:
    """``local(path)`` for a local path; for a URL, whether it exists and (unless `kind` is None) is of `kind`."""
    if not is_url(path):
        return local(path)
    info = _info(str(path))
    return info is not None and (kind is None or info["type"] == kind)


def exists(path: str | os.PathLike) -> bool:
    return _is(path, os.path.exists, None)


def is_dir(path: str | os.PathLike) -> bool:
    return _is(path, os.path.isdir, "directory")


def is_file(path: str | os.PathLike) -> bool:
    return _is(path, os.path.isfile, "file")


def file_size(path: str | os.PathLike) -> int:
    return int(_existing(str(path))["size"]) if is_url(path) else os.path.getsize(path)


def read_text(path: str | os.PathLike) -> str:
    with open_input(path) as f:
        return f.read().decode("utf-8")


def read_range(path: str, offset: int, size: int) -> bytes:
    """`size` bytes of `path` from `offset` (one ``pread``, or one ranged GET for a URL, retried when it fails or
    returns fewer bytes than asked before the end of the file)."""
    if not is_url(path):
        with open(path, "rb") as f:
            return os.pread(f.fileno(), size, offset)
    fs, p = _fs(path)

    def get() -> bytes:
        data = fs.cat_file(p, start=offset, end=offset + size)
        if len(data) < size and offset + len(data) < fs.size(p):
            raise retry.ShortRead(f"{len(data)} of {size} bytes at byte {offset} of {path}")
        return data

    return retry.call(path, get)


def stat_key(path: str) -> tuple[int, str]:
    """(size, a version tag) of an input file, for fingerprints: the mtime locally, the ETag, generation or
    mtime that the object store reports for a URL."""
    if not is_url(path):
        st = os.stat(path)
        return st.st_size, str(st.st_mtime_ns)
    info = _existing(path)
    tag = next((str(info[k]) for k in ("ETag", "etag", "generation", "mtime", "LastModified", "created")
                if info.get(k) is not None), "")
    return int(info["size"]), tag


def find_files(pattern: str) -> list[str]:
    """Files of a URL that is a directory (recursively), a file, or a glob, sorted, as URLs."""
    fs, p = _fs(pattern)
    info = _info(pattern)
    if info is not None and info["type"] == "directory":
        found = _files_under(fs, p)
    elif info is not None:
        found = [p]
    else:
        found = _glob(fs, p)
    return sorted(fs.unstrip_protocol(f) for f in found)


def _files_under(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Every file under directory `root` of `fs`, each directory listed under `xclr_schemas.retry` (fsspec's generic
    ``find`` leaves out a subdirectory whose listing failed)."""
    files, todo = [], [root]
    while todo:
        folder = todo.pop()
        for info in retry.call(fs.unstrip_protocol(folder), functools.partial(fs.ls, folder, detail=True)):
            name = info["name"].rstrip("/")
            if info["type"] != "directory":
                files.append(name)
            elif name != folder:
                todo.append(name)
    return files


def _glob(fs: fsspec.AbstractFileSystem, pattern: str) -> list[str]:
    """The files of `fs` that glob `pattern` matches (fsspec's glob rules; none when it has no wildcard)."""
    magic = [i for i in (pattern.find(c) for c in "*?[") if i >= 0]
    if not magic:
        return []
    root = pattern[:min(magic)].rsplit("/", 1)[0]
    info = _info(fs.unstrip_protocol(root))
    if info is None or info["type"] != "directory":
        return []
    match = re.compile(glob_translate(pattern)).match
    return [f for f in _files_under(fs, root) if match(f)]


def _download(fs: fsspec.AbstractFileSystem, remote: str, target: Path) -> None:
    """Copy file `remote` of `fs` to local `target` atomically, retried; a copy shorter than the remote file is a
    short read."""
    url = fs.unstrip_protocol(remote)

    def get() -> None:
        with atomic_path(target) as tmp:
            fs.get_file(remote, str(tmp))
            if tmp.stat().st_size < fs.size(remote):
                raise retry.ShortRead(f"{tmp.stat().st_size} bytes of {url}")

    retry.call(url, get)


def work_dir(url: str) -> Path:
    """The local work directory of output `url` (see the module docstring)."""
    root = Path(os.environ.get("XCLR_WORK_DIR", Path.home() / ".cache" / "xclr" / "work")).expanduser()
    return root / (basename(url) + "-" + hashlib.sha1(url.encode()).hexdigest()[:12])


def _push_order(rel: str) -> tuple[int, str]:
    """Data, then JSON markers, then checkpoints, then the manifest (see the module)."""
    if rel == MANIFEST:
        return 3, rel
    if rel.startswith(CHECKPOINTS + "/"):
        return 2, rel
    return (1 if rel.endswith(".json") else 0), rel


def _local_files(local: Path) -> dict[str, tuple[int, int]]:
    files = {}
    for p in local.rglob("*"):
        rel = p.relative_to(local).as_posix()
        if p.is_file() and TMP_MARK not in p.name and rel not in LOCAL_ONLY:
            st = p.stat()
            files[rel] = (st.st_size, st.st_mtime_ns)
    return files


def _record(local: Path) -> dict:
    path = local / PUSHED
    return json.loads(path.read_text()) if path.exists() else {}


def pull(url: str, local: Path) -> None:
    """Copy the files of directory `url` that `local` lacks into `local`, in push order (see the module)."""
    fs, root = _fs(url)
    if not is_dir(url):
        return
    record = _record(local)
    remote = [posixpath.relpath(f, root) for f in _files_under(fs, root)]
    for rel in sorted((r for r in remote if TMP_MARK not in r and r not in LOCAL_ONLY), key=_push_order):
        target = local / rel
        if target.exists():
            continue
        _download(fs, posixpath.join(root, rel), target)
        st = target.stat()
        record[rel] = [st.st_size, st.st_mtime_ns]
    local.mkdir(parents=True, exist_ok=True)
    write_json_atomic(local / PUSHED, record)


def push(local: Path, url: str) -> int:
    """Upload the files of `local` that changed since they were last pushed or pulled, in push order (see the
    module). Returns the number of files uploaded."""
    fs, root = _fs(url)
    record = _record(local)
    changed = [rel for rel, key in _local_files(local).items() if record.get(rel) != list(key)]
    for rel in sorted(changed, key=_push_order):
        upload(local / rel, fs.unstrip_protocol(posixpath.join(root, rel)))
        st = (local / rel).stat()
        record[rel] = [st.st_size, st.st_mtime_ns]
        write_json_atomic(local / PUSHED, record)
    return len(changed)


def upload(local: Path, url: str) -> None:
    """Copy file `local` to `url`: to a temporary name, then moved into place (a file under `url` is whole). The
    three calls are retried together: a move whose answer was lost is done again from a new upload."""
    fs, final = _fs(url)
    tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex[:12]}"

    def put() -> None:
        fs.makedirs(posixpath.dirname(final), exist_ok=True)
        fs.put_file(str(local), tmp)
        fs.mv(tmp, final)

    retry.call(url, put)


def fetch(url: str | os.PathLike) -> Path:
    """A local copy of input `url` (a local path is returned as is). A directory is pulled into its work
    directory: only complete directories (with their manifest) should be fetched, since the copy is only ever
    completed with the files it lacks. A file is downloaded again on every call (a checkpoint such as
    ``latest.pt`` changes in place)."""
    if not is_url(url):
        return Path(url)
    url = str(url)
    local = work_dir(url)
    fs, p = _fs(url)
    if is_dir(url):
        pull(url, local)
        return local
    target = local / basename(p)
    _download(fs, p, target)
    return target


@contextmanager
def local_dir(path: str | os.PathLike, publish: bool = True) -> Iterator[Path]:
    """The local directory a stage writes output `path` into: `path` itself, or for a URL its work directory,
    pulled before and, when `publish`, pushed after the body (also when the body raises)."""
    if not is_url(path):
        yield Path(path)
        return
    url = str(path)
    local = work_dir(url)
    pull(url, local)
    try:
        yield local
    finally:
        if publish and local.exists():
            push(local, url)
