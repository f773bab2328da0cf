"""One writer per output directory, the rule every command that writes one follows (`xclr-prep embed`, `graph`,
`xclr-train`'s main rank): it holds an exclusive lock on ``OUT/.lock`` from before it reads OUT (a URL's pull
included) until its last write (a URL's last push), and a second command on the same OUT is refused at once with
one line instead of interleaving its output with the first's.

The lock is ``flock(2)`` on the open file: the kernel drops it when the holder's process ends, however it ends
(kill -9 included), so a killed holder never leaves OUT locked. It is the holder's alone: a forked child (a
DataLoader worker) closes its inherited copy of the descriptor at once, or the lock would last until the child
ended too, and a rerun right after a kill -9 of the holder would be refused. The file itself stays; its presence
means nothing.
For an fsspec URL the lock is on the URL's local work directory (`xclr_schemas.storage.work_dir`): it excludes
writers that share that filesystem, not writers on other machines. On a filesystem without flock (Lustre mounted
without ``-o flock``, NFS without a lock manager) the command says so in one line on stderr and runs unlocked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xclr_schemas import storage

LOCK = ".lock"
UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)  # flock(2) is not available on that filesystem


_HELD: set[int] = set()  # the descriptors of the locks this process holds


def _drop_inherited() -> None:
    """In a forked child: close the parent's lock descriptors (the module docstring says why)."""
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited)


class OutputBusy(Exception):
    """Another process holds OUT's lock (the message is one line, for the user)."""


@contextmanager
def exclusive(out: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of output `out` (a local directory, or a URL) for the body; OutputBusy at once when another
    process holds it. One process takes it once per output (a second `exclusive` on it in the same process is
    refused too)."""
    local = storage.work_dir(str(out)) if storage.is_url(out) else Path(out)
    local.mkdir(parents=True, exist_ok=True)
    fd = os.open(local / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    _HELD.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise OutputBusy(f"{out} is being written by another command (it holds {local / LOCK}); wait for "
                                 "it to end or use another output") from None
            if exc.errno not in UNSUPPORTED:
                raise
            print(f"warning: {local} cannot be locked ({os.strerror(exc.errno)}): nothing stops a second command "
                  "writing it at the same time", file=sys.stderr)
        yield
    finally:
        if fd in _HELD:  # not in a forked child, which closed it already
            _HELD.discard(fd)
            os.close(fd)
