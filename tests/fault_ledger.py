"""A pytest plugin (conftest.py loads it): the ledger of what the fault tests injected and survived, and the tally
of the fuzzers' cases, printed at the end of the run and written as JSON to $XCLR_FAULT_REPORT when it is set.

A fault test records each fault under one of `KINDS` (docs/cluster.md, "Fault injection", lists them with how each
is injected). "Survived" means the fault ended as the docs specify: the documented recovery ended equal to an
uninterrupted run, or the documented refusal came (a one-line error, nothing written that a rerun would trust).
A fuzzer adds each generated case to the tally under one of `OUTCOMES`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

KINDS = (
    "kill -9",  # of a command, an actor or a rank
    "lost node",  # a Ray worker node stopped
    "stop signal",  # SIGTERM/SIGUSR1, a scheduler's preemption
    "transient storage error",  # an object store failing a fraction of calls
    "short read",  # an object store returning fewer bytes than asked
    "store down",  # an object store failing every call
    "disk full",
    "truncated file",
    "flipped bits",
    "non-finite loss",
    "hung rank",  # SIGSTOP of one torchrun rank
    "two writers",  # two commands on one output directory at once
    "input changed",  # between a kill and the rerun, or under a running command
)

OUTCOMES = (
    "read",  # a valid case, read as such
    "skipped",  # counted as a skip with its reason
    "refused",  # a one-line error (exit status 2 for a command)
    "failed",  # anything else: a traceback, a hang, a file outside the output, too much memory
)


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
        self.fuzz: Counter[str] = Counter()
        self.capped: list[str] = []  # fuzz families whose wall-clock cap cut their cases short

    def record(self, kind: str, name: str, injected: int = 1, survived: bool = False, samples_lost: int = 0) -> None:
        """One test's fault(s) of `kind` (one of KINDS), described by `name`."""
        if kind not in KINDS:
            raise ValueError(f"fault kind {kind!r} is not one of {KINDS}")
        self.faults.append({"kind": kind, "name": name, "injected": injected,
                            "survived": injected if survived else 0, "samples_lost": int(samples_lost)})

    def fuzzed(self, outcome: str) -> None:
        """One fuzzed case that ended in `outcome` (one of OUTCOMES)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"fuzz outcome {outcome!r} is not one of {OUTCOMES}")
        self.fuzz[outcome] += 1

    def fuzz_capped(self, family: str) -> None:
        """A fuzz family whose wall-clock cap cut its cases short (tests/fuzz_harness.py)."""
        self.capped.append(family)

    def totals(self) -> dict:
        totals = {key: sum(f[key] for f in self.faults) for key in ("injected", "survived", "samples_lost")}
        fuzz = {outcome: self.fuzz[outcome] for outcome in OUTCOMES}
        return {**totals, "kinds": len({f["kind"] for f in self.faults}), "fuzz": {"tried": self.fuzz.total(), **fuzz,
                                                                        "capped": self.capped}}


_LEDGER = pytest.StashKey[FaultLedger]()


def pytest_configure(config) -> None:
    config.stash[_LEDGER] = FaultLedger()


@pytest.fixture(scope="session")
def fault_ledger(pytestconfig) -> FaultLedger:
    return pytestconfig.stash[_LEDGER]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the faults when a fault test ran and the fuzz tally when a fuzzer ran; write both as JSON to
    $XCLR_FAULT_REPORT when it is set."""
    ledger = config.stash.get(_LEDGER, None)
    if ledger is None:
        return
    totals = ledger.totals()
    if ledger.faults or ledger.fuzz:
        terminalreporter.write_sep("=", "fault injection and fuzzing")
    for f in ledger.faults:
        terminalreporter.write_line(f"[{f['kind']}] {f['name']}: injected {f['injected']}, survived {f['survived']}, "
                                    f"samples lost {f['samples_lost']}")
    if ledger.faults:
        terminalreporter.write_line(f"faults injected {totals['injected']} of {totals['kinds']} kinds, survived "
                                    f"{totals['survived']}, samples lost {totals['samples_lost']}")
    fuzz = totals["fuzz"]
    if ledger.fuzz:
        terminalreporter.write_line(f"fuzzed cases tried {fuzz['tried']}: read {fuzz['read']}, skipped "
                                    f"{fuzz['skipped']}, refused {fuzz['refused']}, failed {fuzz['failed']}; cut "
                                    f"by their time cap: {', '.join(ledger.capped) or 'none'}")
    if report := os.environ.get("XCLR_FAULT_REPORT"):
        Path(report).write_text(json.dumps({**totals, "faults": ledger.faults}, indent=2) + "\n")
