"""benchmarks/harness.py's run_measured: a command that fails, or outlives its timeout, stops the benchmark with
SystemExit and the end of its stderr; a timed-out command is killed and reaped, not left running."""

import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from harness import run_measured  # noqa: E402


def test_a_command_past_its_timeout_is_killed_and_stops_the_benchmark(tmp_path):
    pid = tmp_path / "pid"
    code = (f"import os, sys, time; open({str(pid)!r}, 'w').write(str(os.getpid())); "
            "print('started', file=sys.stderr, flush=True); time.sleep(600)")
    with pytest.raises(SystemExit, match=r"(?s)command killed after 1 s.*started"):
        run_measured([sys.executable, "-c", code], timeout=1)
    assert not psutil.pid_exists(int(pid.read_text()))


def test_a_failed_command_stops_the_benchmark_with_its_exit_code_and_stderr():
    with pytest.raises(SystemExit, match=r"(?s)exit 3.*went wrong"):
        run_measured([sys.executable, "-c", "import sys; print('went wrong', file=sys.stderr); sys.exit(3)"])
