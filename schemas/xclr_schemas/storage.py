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
local output directory must).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import fsspec

from xclr_schemas.atomic import TMP_MARK, atomic_path, write_json_atomic
from xclr_schemas.names import CHECKPOINTS, MANIFEST

PUSHED = ".pushed.json"  # in a work directory: size and mtime of each file as last pushed or pulled


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
    """`path` opened for binary reading (a local file, or a seekable fsspec file for a URL)."""
    return _ask(path, lambda p: open(p, "rb"), "open")


def _ask(path: str | os.PathLike, local: Callable, method: str):
    """``local(path)`` for a local path, else the fsspec filesystem's `method` on the URL's path."""
    if is_url(path):
        fs, p = _fs(str(path))
        return getattr(fs, method)(p)
    return local(path)


def exists(path: str | os.PathLike) -> bool:
    return _ask(path, os.path.exists, "exists")


def is_dir(path: str | os.PathLike) -> bool:
    return _ask(path, os.path.isdir, "isdir")


def is_file(path: str | os.PathLike) -> bool:
    return _ask(path, os.path.isfile, "isfile")


def file_size(path: str | os.PathLike) -> int:
    return _ask(path, os.path.getsize, "size")


def read_text(path: str | os.PathLike) -> str:
    with open_input(path) as f:
        return f.read().decode("utf-8")


def read_range(path: str, offset: int, size: int) -> bytes:
    """`size` bytes of `path` from `offset` (one ``pread``, or one ranged GET)."""
    if is_url(path):
        fs, p = _fs(path)
        return fs.cat_file(p, start=offset, end=offset + size)
    with open(path, "rb") as f:
        return os.pread(f.fileno(), size, offset)


def stat_key(path: str) -> tuple[int, str]:
    """(size, a version tag) of an input file, for fingerprints: the mtime locally, the ETag, generation or
    mtime that the object store reports for a URL."""
    if not is_url(path):
        st = os.stat(path)
        return st.st_size, str(st.st_mtime_ns)
    fs, p = _fs(path)
    info = fs.info(p)
    tag = next((str(info[k]) for k in ("ETag", "etag", "generation", "mtime", "LastModified", "created")
                if info.get(k) is not None), "")
    return int(info["size"]), tag


def find_files(pattern: str) -> list[str]:
    """Files of a URL that is a directory (recursively), a file, or a glob, sorted, as URLs."""
    fs, p = _fs(pattern)
    if fs.isdir(p):
        found = fs.find(p)
    elif fs.isfile(p):
        found = [p]
    else:
        found = [f for f in fs.glob(p) if fs.isfile(f)]
    return sorted(fs.unstrip_protocol(f) for f in found)


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
        if p.is_file() and TMP_MARK not in p.name and rel != PUSHED:
            st = p.stat()
            files[rel] = (st.st_size, st.st_mtime_ns)
    return files


def _record(local: Path) -> dict:
    path = local / PUSHED
    return json.loads(path.read_text()) if path.exists() else {}


def pull(url: str, local: Path) -> None:
    """Copy the files of directory `url` that `local` lacks into `local`, in push order (see the module)."""
    fs, root = _fs(url)
    if not fs.isdir(root):
        return
    record = _record(local)
    remote = [posixpath.relpath(f, root) for f in fs.find(root)]
    for rel in sorted((r for r in remote if TMP_MARK not in r), key=_push_order):
        target = local / rel
        if target.exists():
            continue
        with atomic_path(target) as tmp:
            fs.get_file(posixpath.join(root, rel), str(tmp))
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
    """Copy file `local` to `url`: to a temporary name, then moved into place (a file under `url` is whole)."""
    fs, final = _fs(url)
    tmp = f"{final}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    fs.makedirs(posixpath.dirname(final), exist_ok=True)
    fs.put_file(str(local), tmp)
    fs.mv(tmp, final)


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
    if fs.isdir(p):
        pull(url, local)
        return local
    target = local / basename(p)
    with atomic_path(target) as tmp:
        fs.get_file(p, str(tmp))
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
