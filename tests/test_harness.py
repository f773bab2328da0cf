"""benchmarks/harness.py's run_measured: a command that fails, or outlives its timeout, stops the benchmark with
SystemExit and the end of its stderr; a timed-out command is killed and reaped, not left running."""

import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from harness import run_measured  # noqa: E402


def test_a_command_past_its_timeout_is_killed_with_its_children_and_stops_the_benchmark(tmp_path):
    """The command starts a child that holds its stderr (as DataLoader or compile workers do) and both sleep."""
    pids = tmp_path / "pids"
    sleeper = "import time; time.sleep(600)"
    code = (f"import os, subprocess, sys; child = subprocess.Popen([sys.executable, '-c', {sleeper!r}]); "
            f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}'); "
            "print('started', file=sys.stderr, flush=True); child.wait()")
    with pytest.raises(SystemExit, match=r"(?s)command killed after 1 s.*started"):
        run_measured([sys.executable, "-c", code], timeout=1)
    for pid in map(int, pids.read_text().split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_failed_command_stops_the_benchmark_with_its_exit_code_and_stderr():
    with pytest.raises(SystemExit, match=r"(?s)exit 3.*went wrong"):
        run_measured([sys.executable, "-c", "import sys; print('went wrong', file=sys.stderr); sys.exit(3)"])
