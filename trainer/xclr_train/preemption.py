"""Stopping at a step boundary when a scheduler asks (docs/cluster.md, Preemption).

SLURM (`--signal`, preemption, `scancel --signal`), Kubernetes (pod eviction, then `terminationGracePeriodSeconds`)
and spot-instance agents ask a job to stop with SIGTERM, or with SIGUSR1 ahead of time. `Preemption` catches both on
every rank; the handler only records the signal, so the step in progress finishes. After each step the ranks agree
(`distributed.any_rank`): if any rank was signalled, every rank stops after that same step, the main rank writes
``latest.pt`` at that step (`xclr_train.train`), and `xclr-train` prints one line saying how to resume and exits
with `PREEMPTED_EXIT`. A further signal meanwhile is recorded again and changes nothing; the save itself is atomic
(`xclr_schemas.atomic`), so even a SIGKILL during it leaves the previous ``latest.pt`` whole. A signal before the
first step stops the run there, with nothing to save.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

PREEMPTED_EXIT = 75  # sysexits' EX_TEMPFAIL: a temporary failure, the same command may be run again
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_signals(worker: int | None = None) -> None:
    """Ignore SIGTERM and SIGUSR1 from now on, then let them through: a DataLoader worker's start (a scheduler may
    signal the whole process group; the training process decides when to stop, and ends its workers itself). The
    worker was forked with them blocked (`blocked`), so none arrived under torch's worker handler, which dies of one."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextmanager
def blocked() -> Iterator[None]:
    """SIGTERM and SIGUSR1 held back in this thread (and in the processes it forks) while inside; a signal that came
    meanwhile is delivered (recorded) on leaving. Around the start of DataLoader workers (`ignore_signals`)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


class Preempted(Exception):
    """The run stopped at a scheduler's signal; the message is the one line `xclr-train` prints."""


class Preemption:
    """While entered, SIGTERM and SIGUSR1 are recorded (`signal`, the first one) instead of ending the process. On
    exit the handlers before are restored, except when leaving with `Preempted`: the process is then on its way out
    because of these signals, and ignores any more of them (a scheduler may repeat its signal until the job ends)."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._before: dict[signal.Signals, object] = {}

    def __enter__(self) -> Preemption:
        for sig in SIGNALS:
            self._before[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, signal.SIG_IGN if isinstance(exc, Preempted) else handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signal = self.signal or signal.Signals(signum)

    @property
    def name(self) -> str:
        """The signal's name, or "a signal on another rank" where this rank got none."""
        return self.signal.name if self.signal is not None else "a signal on another rank"
