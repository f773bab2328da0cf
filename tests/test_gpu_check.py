"""benchmarks/gpu_check.sh's dry run (--device cpu --quick) as a GPU node without a package registry would run it:
the project's other dependencies from the folder scripts/gpu_wheels.sh makes, installed offline, and neither Ray,
FAISS nor grpc importable (each shadowed by a package that raises ImportError). Every module its processes hold at
their exit is logged (a sitecustomize on PYTHONPATH; DataLoader workers, which end without exit handlers, are forks
of a process that logs): each must be the standard library's, the project's, pip's (the script installs with the
node's), or of a distribution the node has (torch, torchvision, sentence-transformers and what they require) or the
folder carries, so that a dependency missing from the folder fails here, not on the node. (Optional imports that
succeed only because this environment has more: OPTIONAL.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from gpu_check import QUICK, SECTIONS, memory  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NODE = ("torch", "torchvision", "sentence-transformers")
LOG_IMPORTS = """import atexit, os, sys
def _log():
    with open(os.environ["XCLR_IMPORT_LOG"], "a") as f:
        f.write("\\n".join({name.partition(".")[0] for name in sys.modules}) + "\\n")
atexit.register(_log)
"""
pytestmark = pytest.mark.slow


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def node_distributions() -> set[str]:
    """NODE and every distribution they require, as their metadata here says (extras left out)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    todo, seen = list(NODE), set()
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [r.name for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate({"extra": ""})]
    return seen


# Distributions imported here only because this environment has them: an import that tries them and goes on without
OPTIONAL = {"charset-normalizer": "numpy.f2py.crackfortran's encoding detection",
            "attrs": "rich.pretty's (typer's, pip's vendored copy's) support for attrs classes"}


def foreign_imports(imported: set[str], carried: set[str]) -> dict[str, list[str]]:
    """The top-level modules of `imported` whose distributions the node neither has nor gets from the folder:
    {module: its distributions here}. (A module of no distribution is the standard library's, the project's, or an
    extension module registered at the top level; a missing dependency is always some distribution's.)"""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    # the project runs from the checkout; the .sh installs with the node's pip
    allowed = node_distributions() | carried | set(OPTIONAL) | {"xclr", "pip"}
    return {m: dists[m] for m in imported if dists.get(m) and not any(canonical(d) in allowed for d in dists[m])}


def test_the_dry_run_on_the_wheel_folder_alone_measures_every_section(tmp_path):
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    made = subprocess.run(["bash", "scripts/gpu_wheels.sh", str(tmp_path / "wheels"), python], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    size = re.search(r"wheels and the caption model's configuration, (\d+) MiB \(limit 64 MiB\)", made.stdout)
    assert size and int(size[1]) <= 64, made.stdout
    assert sum(f.stat().st_size for f in (tmp_path / "wheels").rglob("*") if f.is_file()) <= 64 * 2**20
    assert not list((tmp_path / "wheels" / "caption-model").glob("*.safetensors"))  # no weights travel

    blocked = tmp_path / "not-on-the-node"
    for name in ("ray", "faiss", "grpc"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not on this node')\n")
    (blocked / "sitecustomize.py").write_text(LOG_IMPORTS)
    log = tmp_path / "imported.txt"
    env = {**os.environ, "PYTHON": sys.executable, "XCLR_GPU_WHEELS": str(tmp_path / "wheels"),
           "XCLR_GPU_SITE": str(tmp_path / "site"), "PYTHONPATH": str(blocked), "XCLR_IMPORT_LOG": str(log)}
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--quick", "--out",
                          str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-5000:]
    results = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert tuple(results["sections"]) == SECTIONS and not results["failed"] and results["machine"]["device"] == "cpu"
    sec = results["sections"]
    assert sec["embed"]["xclr_captions_per_s"] > 0 and sec["embed"]["plain_captions_per_s"] > 0
    assert sec["topk"]["faiss_gpu"].startswith("skipped") and sec["topk"]["xclr_effective_tflops"] > 0
    assert 0 < sec["step"]["objective_fraction_at_b"] < 1 and 0 < sec["step"]["simclr_fraction_at_b"] < 1
    loader = sec["loader"]
    assert 0 <= loader["data_wait_share"] < 1 and loader["samples_per_s"] > 0
    assert loader["steps_timed"] == QUICK.loader_steps - 2 * loader["workers"]  # one epoch, less the warm-up
    plain, chunked = sec["memory"]["rows"]
    assert plain["step_vs_plain"] == 1 and "--micro-batch" in chunked["options"] and chunked["step_vs_plain"] > 0
    summary = (tmp_path / "out" / "gpu-check.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary[1:]] == ["embed", "topk", "step", "loader", "memory", "memory"]

    carried = {canonical(line) for line in (ROOT / "scripts" / "gpu_wheels.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    imported = set(log.read_text().split())
    assert {"webdataset", "pyarrow", "torch", "sentence_transformers", "xclr_train"} <= imported  # the log works
    assert not foreign_imports(imported, carried)



def test_a_memory_configuration_that_fails_is_recorded_beside_the_others_rows():
    """--micro-batch B/4 of B = 2 is 0, which xclr-train refuses: that row is an error, the plain step's row stands,
    and the section's errors make the command exit 1 (gpu_check.main)."""
    got = memory(replace(QUICK, batch=2), "cpu")
    assert [r["step_vs_plain"] for r in got["rows"]] == [1.0]
    (config, error), = got["errors"].items()
    assert "--micro-batch 0" in config and "at least 1" in error
