"""Retrying calls to a remote store: the one rule for transient storage errors. `xclr_schemas.storage` makes every
call on an fsspec URL through `call`, and reads a URL's file through `Reader`, so every stage follows it.

- Transient (`is_transient`): a connection error, a timeout or an SSL error; an OSError with an errno other than
  those retrying cannot mend (`PERMANENT`: no such file, no permission, a directory, a full disk, a read-only
  store; an OSError without an errno, such as a damaged gzip stream, is not retried); a client library's
  connection error that is no OSError, told by its class name (`CONNECTION_ERRORS`: botocore, aiohttp, urllib3,
  http.client, so that none of them need be installed); an error carrying an HTTP status 408, 429 or 5xx; and a
  short read (`ShortRead`: fewer bytes than asked, before the end of the file, as when a connection is cut
  mid-body).
- Retry n (1, 2, ...) of a call waits a time drawn uniformly from [0, min(MAX_PAUSE, FIRST_PAUSE * 2**(n-1))]
  ("full jitter"; s3fs's first pause and cap) while less than `retry_seconds()` have passed since the call's first
  try: the environment variable XCLR_STORAGE_RETRY_SECONDS, default DEFAULT_RETRY_SECONDS (google-api-core's
  default deadline); 0 retries nothing. Past it the call raises StorageError: one line naming the URL, the time and
  tries spent and the last error. A store that stays down stops a command after that bound plus one try (whose own
  time the client library's timeouts bound), never hangs it.
- Each retry is counted in its process (`counts()`); a process that retried says so in one line on stderr at its
  exit: "xclr storage: N transient errors and M short reads retried".
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import io
import os
import random
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from xclr_schemas.options import UserError

RETRY_SECONDS_VAR = "XCLR_STORAGE_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 120.0
FIRST_PAUSE = 0.1  # seconds
MAX_PAUSE = 15.0
PERMANENT = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST,
                       errno.ENOTEMPTY, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.EINVAL})
CONNECTION_ERRORS = frozenset({"ConnectionError", "HTTPClientError", "IncompleteReadError", "ClientConnectionError",
                               "ClientPayloadError", "ProtocolError", "IncompleteRead"})
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

T = TypeVar("T")


class StorageError(UserError):
    """A store that kept failing a call past the retry bound: the command's one-line error (exit status 2).

    The message is one line: a message that arrives with a traceback (torch re-raises a DataLoader worker's error
    as its type, the traceback as its message) keeps its last line, the worker's own message."""

    def __init__(self, message: str) -> None:
        last = (message.strip().splitlines() or [""])[-1]
        super().__init__(last.split("StorageError: ", 1)[-1])


class ShortRead(Exception):
    """A read that returned fewer bytes than asked before the end of the file."""


@dataclass(frozen=True)
class Retries:
    """What this process retried so far."""
    transient: int
    short_reads: int


_COUNTS: Counter[str] = Counter()


def counts() -> Retries:
    return Retries(_COUNTS["transient"], _COUNTS["short read"])


def retry_seconds() -> float:
    """The bound on a call's retries: $XCLR_STORAGE_RETRY_SECONDS, else DEFAULT_RETRY_SECONDS."""
    given = os.environ.get(RETRY_SECONDS_VAR)
    if given is None:
        return DEFAULT_RETRY_SECONDS
    try:
        seconds = float(given)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise StorageError(f"{RETRY_SECONDS_VAR} must be a number of seconds, 0 or more, got {given!r}")
    return seconds


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may mend `exc` (see the module)."""
    if isinstance(exc, ShortRead):
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):  # whatever their errno (an SSL code, or none)
        return True
    if isinstance(exc, OSError):
        return exc.errno is not None and exc.errno not in PERMANENT
    if any(cls.__name__ in CONNECTION_ERRORS for cls in type(exc).__mro__):
        return True
    return getattr(exc, "status", None) in TRANSIENT_STATUS or getattr(exc, "code", None) in TRANSIENT_STATUS


def call(url: str, attempt: Callable[[], T]) -> T:
    """``attempt()``, tried again on a transient error under the rule of the module; StorageError naming `url`
    once the bound has passed. Other errors are raised at once."""
    bound = retry_seconds()
    start = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except Exception as exc:
            if not is_transient(exc):
                raise
            left = start + bound - time.monotonic()
            if left <= 0:
                reason = (str(exc).strip().splitlines() or [""])[0]
                raise StorageError(f"{url}: the store failed {tries} tries in {time.monotonic() - start:.1f} s "
                                   f"({RETRY_SECONDS_VAR}={bound:g}); last: {type(exc).__name__}: {reason}") from None
            _COUNTS["short read" if isinstance(exc, ShortRead) else "transient"] += 1
            time.sleep(min(left, random.uniform(0, min(MAX_PAUSE, FIRST_PAUSE * 2 ** min(tries - 1, 30)))))


class Reader(io.RawIOBase):
    """A remote file of `size` bytes read under `call`'s rule: a read that fails with a transient error or returns
    fewer bytes than asked before the end reopens the file (``open_file()``) at the same place and reads again.
    Seeking only moves the place. Wrap it in io.BufferedReader for small reads and lines."""

    def __init__(self, url: str, open_file: Callable[[], BinaryIO], size: int) -> None:
        super().__init__()
        self.url, self.size = url, size
        self._open_file = open_file
        self._file: BinaryIO | None = None
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, f"negative seek position in {self.url}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        want = max(0, min(len(buffer), self.size - self._pos))
        if want:
            buffer[:want] = call(self.url, lambda: self._read(want))
            self._pos += want
        return want

    def _read(self, want: int) -> bytes:
        try:
            if self._file is None:
                self._file = self._open_file()
            if self._file.tell() != self._pos:
                self._file.seek(self._pos)
            data = self._file.read(want)
        except Exception:
            self._drop()
            raise
        if len(data) != want:
            self._drop()
            raise ShortRead(f"{len(data)} of {want} bytes at byte {self._pos} of {self.url}")
        return data

    def _drop(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()

    def close(self) -> None:
        self._drop()
        super().close()


def _report() -> None:
    done = counts()
    if done.transient or done.short_reads:
        print(f"xclr storage: {done.transient} transient errors and {done.short_reads} short reads retried",
              file=sys.stderr)


atexit.register(_report)
