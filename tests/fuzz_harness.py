"""The loop the fuzzers (tests/test_fuzz_*.py) run their hostile cases in, and what counts as a failure.

A fuzz family is a hypothesis strategy of cases and a function `feed(case, work)` that writes the case under
``work/in``, hands it to a reader (whose outputs go to ``work/out``) and returns how it ended: "read" or
"skipped" (counted with its reason). The reader's one-line error (an instance of the family's `refusals`, whose
message is one line) is "refused", unless a hang or a MemoryError lies in its __cause__/__context__ chain. Anything
else is "failed": another exception type (a traceback), an error of more than one line, a broken invariant
(AssertionError), a hang, too much memory, or a file written outside ``work/out`` (or ``work/in``, which the case
wrote).

`fuzz` runs a family's cases in ONE forked child (no new interpreter: the readers are already imported), which
- bounds each case's memory by what the child holds when the case starts: RLIMIT_AS at its size then plus
  CASE_MEMORY, and a case whose peak RSS (VmHWM, reset before each case) rises more than CASE_MEMORY above its RSS
  then fails;
- bounds time: SIGALRM (a timer) after CASE_SECONDS interrupts a case stuck in Python, and the parent kills the
  child when it reports nothing for CASE_SECONDS + a grace (a hang in C code), naming the case it was on, and kills
  a child that has not exited CASE_SECONDS after its last case (a thread or process a case left running);
- runs a `Lane`: its `examples` (hypothesis' max_examples), of which its wall-clock cap may cut only those past its
  `minimum`: a cut family is named in the ledger's fuzz line, and the slow lane's minimums add up to
  SLOW_LANE_TARGET (tests/test_fuzz_train.py checks the sum);
- works in its own empty directory (its cwd) with TMPDIR (and tempfile.tempdir) at an empty folder beside it; after
  each case the whole family root (cwd and tmp included) must hold nothing but that case's ``in`` and ``out``.
Cases are drawn with a fixed seed (hypothesis.seed) and nothing is shrunk: a case never raises, it reports.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

CASE_MEMORY = 1 << 30  # bytes a case may take above the child's size at the fork
CASE_SECONDS = 20
OUTCOMES_OF_FEED = ("read", "skipped")


class Hang(BaseException):
    """Raised in the child by SIGALRM: a case ran past its seconds. A BaseException, so that a reader's
    `except Exception` lets it through instead of turning it into a refusal."""


@dataclass(frozen=True)
class Lane:
    """A family's cases in one lane: `examples` drawn under `seed`; the wall-clock cap `cap_s` may cut those after
    the first `minimum`."""
    examples: int
    seed: int
    minimum: int
    cap_s: float


@dataclass
class FamilyResult:
    """What one family's cases came to: outcomes by name, and each failed case's reproducer and why it failed."""
    name: str
    outcomes: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    capped: bool = False  # the wall-clock cap stopped the loop (past the lane's minimum) before its examples

    @property
    def cases(self) -> int:
        return sum(self.outcomes.values())


def _one_line(exc: BaseException) -> bool:
    return len(str(exc).strip().splitlines()) == 1


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and every exception it was raised from or while handling (__cause__, __context__), each once."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        exc = pending.pop()
        if exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            yield exc
            pending += [exc.__cause__, exc.__context__]


def _judge_refusal(exc: BaseException, seconds: float) -> tuple[str, str]:
    """A refusal is "refused" when its message is one line and no hang or MemoryError lies in its chain (a reader
    that catches Exception turned the case's hang or memory blow-up into a refusal); else "failed"."""
    for cause in _chain(exc):
        if isinstance(cause, Hang):
            return "failed", f"hang: over {seconds:g} s, then refused as {exc!r}"
        if isinstance(cause, MemoryError):
            return "failed", f"memory: an allocation over the case's bound, then refused as {exc!r}"
    return ("refused", str(exc)) if _one_line(exc) else ("failed", f"error of many lines: {exc!r}")


def _status(key: str) -> int:
    """A size in bytes from /proc/self/status: VmSize, VmRSS, or VmHWM (the peak RSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _bound_memory() -> int:
    """Bound the next case by what the child holds now, not at the fork (earlier cases' growth is not the next
    one's): RLIMIT_AS at the current VmSize + CASE_MEMORY, and the peak RSS reset to the current RSS (clear_refs 5
    resets VmHWM); the current RSS, from which the case's peak growth is VmHWM - it."""
    resource.setrlimit(resource.RLIMIT_AS, (_status("VmSize") + CASE_MEMORY,
                                            resource.getrlimit(resource.RLIMIT_AS)[1]))
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _strays(family: Path, work: Path) -> list[Path]:
    """Everything under the family's root but the case's ``in`` and ``out`` and the (empty) cwd and tmp folders:
    what a case wrote outside its output (``work/out/../../x`` lands here, and so does a temporary file)."""
    inside = (work / "in", work / "out")
    found = []
    for top, dirs, files in os.walk(family):
        here = Path(top)
        dirs[:] = [d for d in dirs if here / d not in inside]
        found += [here / n for n in dirs + files if here / n not in (work, family / "cwd", family / "tmp")]
    return found


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _raise_hang(signum, frame) -> None:
    raise Hang()


def _judge(feed: Callable, case, work: Path, refusals: tuple[type, ...], seconds: float) -> tuple[str, str]:
    """(outcome, detail) of one case run in `work`."""
    for sub in ("in", "out"):
        (work / sub).mkdir(parents=True)
    rss0 = _bound_memory()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        outcome, detail = feed(case, work), ""
        if outcome not in OUTCOMES_OF_FEED:
            outcome, detail = "failed", f"feed returned {outcome!r}"
    except refusals as exc:
        outcome, detail = _judge_refusal(exc, seconds)
    except Hang:
        outcome, detail = "failed", f"hang: over {seconds:g} s"
    except MemoryError:
        outcome, detail = "failed", "memory: an allocation over the case's bound"
    except BaseException as exc:  # noqa: BLE001 - every other exception is what the fuzzer looks for
        outcome, detail = "failed", "".join(traceback.format_exception(exc)[-3:]).strip()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    stray = _strays(work.parent, work)
    if stray and outcome != "failed":
        outcome, detail = "failed", f"files outside the output directory: {[str(p) for p in stray[:5]]}"
    _remove(stray)  # the next case is judged on what it writes
    grown = _status("VmHWM") - rss0
    if grown > CASE_MEMORY and outcome != "failed":
        outcome, detail = "failed", f"memory: peak RSS {grown >> 20} MiB above the case's start"
    return outcome, detail


def _child(conn, name: str, strategy, feed: Callable, refusals: tuple[type, ...], lane: Lane, root: Path,
           seconds: float) -> None:
    """The fuzz loop, in the forked child: one JSON line per case on `conn` ("start" first, then its outcome)."""
    for sub in ("cwd", "tmp"):
        (root / sub).mkdir(parents=True)
    os.chdir(root / "cwd")
    os.environ["TMPDIR"] = tempfile.tempdir = str(root / "tmp")  # temporary files land where they are seen
    signal.signal(signal.SIGALRM, _raise_hang)
    if "torch" in sys.modules:  # the parent's OpenMP pool does not survive the fork: run torch's ops inline
        sys.modules["torch"].set_num_threads(1)
    # One thread per pool: each thread's stack and malloc arena count against RLIMIT_AS, as many as the machine's
    # cores, so the limit would otherwise mean less on a bigger machine.
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    pa.allocate_buffer(1)  # pyarrow's allocator (mimalloc) reserves its arena now, not inside a case
    start, n = time.monotonic(), 0

    @seed(lane.seed)
    @settings(max_examples=lane.examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(case=strategy)
    def loop(case) -> None:
        nonlocal n
        if n >= lane.minimum and time.monotonic() - start > lane.cap_s:
            conn.send(json.dumps({"capped": True}))
            return
        text = repr(case)
        conn.send(json.dumps({"start": text[:600]}))
        work = root / f"case-{n:05d}"
        outcome, detail = _judge(feed, case, work, refusals, seconds)
        if outcome == "failed":
            keep = root.parent / f"{name}-failed-{n:05d}"
            shutil.copytree(work / "in", keep, dirs_exist_ok=True)
            detail += f" (inputs kept in {keep})"
        shutil.rmtree(work, ignore_errors=True)
        n += 1
        conn.send(json.dumps({"outcome": outcome, "case": text[:600], "detail": detail[:1500]}))

    try:
        loop()
    except BaseException:  # noqa: BLE001 - the harness itself broke: the parent reports it
        conn.send(json.dumps({"harness": traceback.format_exc()[-3000:]}))
    conn.close()


def fuzz(name: str, strategy: st.SearchStrategy, feed: Callable, refusals: tuple[type, ...], lane: Lane,
         root: Path, case_seconds: float = CASE_SECONDS) -> FamilyResult:
    """Run the `lane`'s cases of `strategy` through `feed` in one forked child (module docstring), each allowed
    `case_seconds`; their result."""
    result = FamilyResult(name)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, name, strategy, feed, refusals, lane, root / name,
                                            case_seconds))
    proc.start()
    child.close()
    current = None
    while True:
        if not parent.poll(case_seconds + 10):
            proc.kill()
            result.outcomes["failed"] += current is not None
            result.failures.append(f"{name}: no report for {case_seconds + 10} s (a hang in C code?) in case "
                                   f"{current}")
            break
        try:
            msg = json.loads(parent.recv())
        except EOFError:
            break
        if "start" in msg:
            current = msg["start"]
        elif "capped" in msg:
            result.capped = True
        elif "harness" in msg:
            result.failures.append(f"{name}: the fuzz loop broke:\n{msg['harness']}")
        else:
            current = None
            result.outcomes[msg["outcome"]] += 1
            if msg["outcome"] == "failed":
                result.failures.append(f"{name}: {msg['detail']}\n    case: {msg['case']}")
    proc.join(case_seconds)
    if proc.is_alive():  # a case left a thread or process running that the child's exit waits for
        proc.kill()
        proc.join()
        result.failures.append(f"{name}: the child did not exit {case_seconds:g} s after its last case: killed")
    if proc.exitcode not in (0, None) and current is not None:
        result.outcomes["failed"] += 1
        result.failures.append(f"{name}: the child died (exit {proc.exitcode}) in case {current}")
    return result


FAST_CASES = 6  # per family in the fast lane
SLOW_LANE_TARGET = 1000  # fuzzed cases per slow-lane run, at least (issue 34): the sum of the slow lanes' minimums


def lanes(count: int, minimum: int, cap_s: float) -> list:
    """A family's two lanes, as pytest parameters of one `Lane`: FAST_CASES cases in the fast lane; in the slow lane
    (CI), `count` cases under another seed, of which the wall-clock cap `cap_s` may cut only those past `minimum`."""
    import pytest

    return [pytest.param(Lane(FAST_CASES, 1, FAST_CASES, 30), id="fast"),
            pytest.param(Lane(count, 2, minimum, cap_s), id="slow", marks=pytest.mark.slow)]


def fuzz_and_record(name: str, strategy: st.SearchStrategy, feed: Callable, refusals: tuple[type, ...], lane: Lane,
                    root: Path, ledger) -> None:
    """`fuzz` a family, add its cases (and its being cut by the cap) to the session's fuzz tally
    (tests/fault_ledger.py), and fail listing the failed cases' reproducers."""
    result = fuzz(name, strategy, feed, refusals, lane, root)
    for outcome, count in result.outcomes.items():
        for _ in range(count):
            ledger.fuzzed(outcome)
    if result.capped:
        ledger.fuzz_capped(name)
    assert not result.failures, f"{len(result.failures)} of {result.cases} cases failed:\n" + \
        "\n".join(result.failures[:10])
    assert result.cases >= lane.minimum, f"{name}: {result.cases} cases, under the lane's minimum {lane.minimum}"
