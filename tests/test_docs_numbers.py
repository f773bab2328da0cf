"""Measured figures live in benchmarks/results/*.json and docs/benchmarks.md only (issue 32): the README, the
reference pages and the code's comments and docstrings say what was compared and which way it went, and link to the
section of docs/benchmarks.md that holds the figure. Copies drift; a link does not.

A measured figure here is what only a run can tell: a speed-up (`1.4x`), a rate (`105 MB/s`, `18 samples/s`), a
recall (`recall@32 0.957`), a time with a fraction or in minutes (`7.5 minutes`, `41 min`, `2.2 s`, `14 ms`), a
memory peak (`2.4 GiB`), a signed error (`+24%`), a spread (`0.508 ± 0.004`), a test count (`381 tests`). Defaults,
formulas and sizes the code fixes (`k = 32`, `65536 rows`, `about 130 MB at D = 384`, a 10-minute wait) do not
match; docs/emoji-study.md, docs/study.md, docs/train.md and docs/eval.md are not checked yet."""

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/prep.md", "docs/cluster.md", "docs/design.md", "docs/train.md", "docs/eval.md"]
PACKAGES = ["schemas", "pipeline", "trainer", "evaluation"]
BENCHMARKS = ROOT / "docs" / "benchmarks.md"

NUMBER = r"(?<![\w.])\d[\d,]*(?:\.\d+)?"
SIZE = rf"{NUMBER}\s*[MG]i?B\b"
MEASURED = {  # what each looks like; \s+ where a figure may wrap over two lines
    "speed-up": rf"{NUMBER}x(?!\w)",
    "rate": rf"{NUMBER}\s*(?:[kMGT]i?B|[kMGT]?FLOP|captions|samples|images|queries|steps|it)/s\b",
    "recall": r"\b(?:recall@\d+|R@\d+)\s+(?:of\s+)?(?:0\.\d+|1\.0+)\b",
    "time": r"(?<![\w.])(?:\d+\.\d+\s*(?:s|min|minutes|h|hours)|\d+(?:\.\d+)?\s*(?:ms|min))\b",
    "memory peak": rf"\b(?:peak|RSS)\b[^.]{{0,40}}?{SIZE}|{SIZE}[^.]{{0,30}}\bpeak\b",
    "error": r"(?<![\w.])[+-]\d+(?:\.\d+)?%|\berror\|?:?(?:\s+is)?\s+\d+(?:\.\d+)?%",
    "spread": r"\d\.\d+\s+±\s+\d",
    "test count": rf"{NUMBER}\s+(?:tests|passed|failed)\b",
    "fault ledger": r"\b(?:faults\s+injected|survived|samples\s+lost):?\s+\d",
}
PATTERN = re.compile("|".join(f"(?:{rx})" for rx in MEASURED.values()))


def hits(text: str, first_line: int = 1) -> list[tuple[int, str]]:
    """(line, matched text) of every measured-looking figure in text, lines counted from first_line."""
    return [(first_line + text.count("\n", 0, m.start()), m.group()) for m in PATTERN.finditer(text)]


def prose_of(path: Path) -> list[tuple[int, str]]:
    """A Python file's comments and docstrings (module, class, function), each with its first line."""
    source = path.read_text()
    out = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
           if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            out.append((body[0].lineno, ast.get_source_segment(source, body[0].value)))
    return out


@pytest.mark.parametrize("text, expected", [
    ("token order is 1.4x faster at batch 256", ["1.4x"]),
    ("IVF was **9.96x** faster than exact at recall@32 0.957", ["9.96x", "recall@32 0.957"]),
    ("writing at 105 MB/s, search at 120 GFLOP/s, 376 captions/s", ["105 MB/s", "120 GFLOP/s", "376 captions/s"]),
    ("a small-stem ResNet-18 trains at 18\n  samples/s on 2 cores", ["18\n  samples/s"]),
    ("21.3 minutes, 41 min, 2.2 s, 14 ms, 1.6 h", ["21.3 minutes", "41 min", "2.2 s", "14 ms", "1.6 h"]),
    ("a peak of 2.4 GiB; about 1.4 GB of temporary space at its peak",
     ["peak of 2.4 GiB", "1.4 GB of temporary space at its peak"]),
    ("over-predicted (+24%, -8%); median |error| 10%", ["+24%", "-8%", "error| 10%"]),
    ("0.508 ± 0.004 against 0.472 ± 0.011", ["0.508 ± 0", "0.472 ± 0"]),
    ("381 tests; 306 passed; samples lost 0", ["381 tests", "306 passed", "samples lost 0"]),
])
def test_the_patterns_find_measured_figures(text, expected):
    assert [m for _, m in hits(text)] == expected


@pytest.mark.parametrize("text", [
    "`--k` | 32, capped at U - 1", "`--recall-target` | 0.95", "blocks of 65536 rows (about 130 MB at D = 384)",
    "`IVF{nlist},PQ{D/2}x4fs`; IVF4096,PQ192x4fs; a 1x1 map; 16384 x 384 @ 384 x 65536",
    "with no live actor for 10 minutes", "113 MiB at D = 384", "about 6 s (Ray's health-check period)",
    "`neighbors.npy` is N * k * 12 bytes (4.6 GB at 12M captions, k = 32)", "30% near-duplicate variants",
    "exp(-1 / tau_s); S' = max(0, (S - b) / (1 - b))", "recall@k=1.0000 background=0.216",
    "0x1F600, version 2.14.1, x86-64, 3,786 images per vendor",
])
def test_the_patterns_pass_defaults_formulas_and_sizes(text):
    assert hits(text) == []


@pytest.mark.parametrize("name", DOCS)
def test_docs_link_to_benchmarks_instead_of_copying_figures(name):
    found = hits((ROOT / name).read_text())
    assert not found, f"{name}: measured figures belong in docs/benchmarks.md; link to its section instead: {found}"


def test_code_comments_and_docstrings_hold_no_measured_figures():
    code = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))
    found = [f"{path.relative_to(ROOT)}:{line}: {m}" for path in code for first, text in prose_of(path)
             for line, m in hits(text, first)]
    assert not found, "link to docs/benchmarks.md instead:\n" + "\n".join(found)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but - and _ dropped, spaces as -; a repeat gets -1, -2."""
    out: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in out:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        out.add(anchor)
    return out


def test_links_to_benchmarks_sections_resolve():
    """Every link these pages (and benchmarks.md itself) make to a section of benchmarks.md names a heading there."""
    text = BENCHMARKS.read_text()
    links = {(name, a) for name in DOCS for a in re.findall(r"benchmarks\.md#([\w\-]+)", (ROOT / name).read_text())}
    links |= {("docs/benchmarks.md", a) for a in re.findall(r"\]\(#([\w\-]+)\)", text)}
    broken = sorted(link for link in links if link[1] not in anchors(text))
    assert not broken, f"no such section of docs/benchmarks.md: {broken}"
