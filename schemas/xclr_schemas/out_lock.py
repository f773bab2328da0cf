"""One writer per output directory, the rule every command that writes one follows (`xclr-prep embed`, `graph`,
`xclr-train`'s run directory): it holds an exclusive lock on ``OUT/.lock`` for as long as it writes, and a second
command on the same OUT is refused at once with one line instead of interleaving its output with the first's.

The lock is ``flock(2)`` on the open file: the kernel drops it when the holder's process ends, however it ends
(kill -9 included), so a killed holder never leaves OUT locked. The file itself stays; its presence means nothing.
For an fsspec URL the lock is on the URL's local work directory (`xclr_schemas.storage.work_dir`): it excludes
writers that share that filesystem, not writers on other machines.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"


class OutputBusy(Exception):
    """Another process holds OUT's lock (the message is one line, for the user)."""


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold OUT's lock for the body; OutputBusy at once when another process holds it."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise OutputBusy(f"{out} is being written by another command (it holds {out / LOCK}); wait for it to "
                             "end or use another output") from None
        yield
    finally:
        os.close(fd)
