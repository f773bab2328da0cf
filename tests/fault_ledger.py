"""A pytest plugin (conftest.py loads it): the ledger of what the fault tests injected and survived, printed at the
end of the run and written as JSON to $XCLR_FAULT_REPORT when it is set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


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
