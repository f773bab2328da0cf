"""benchmarks/gpu_check.sh's dry run (--device cpu --quick) as a GPU node without a package registry would run it:
the project's other dependencies from the folder scripts/gpu_wheels.sh makes, installed offline, and neither Ray,
FAISS nor grpc importable (each shadowed by a package that raises ImportError)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("embed", "topk", "step", "loader", "memory")
pytestmark = pytest.mark.slow


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
    env = {**os.environ, "PYTHON": sys.executable, "XCLR_GPU_WHEELS": str(tmp_path / "wheels"),
           "XCLR_GPU_SITE": str(tmp_path / "site"), "PYTHONPATH": str(blocked)}
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--quick", "--out",
                          str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-5000:]
    results = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert tuple(results["sections"]) == SECTIONS and results["machine"]["device"] == "cpu"
    sec = results["sections"]
    assert sec["embed"]["xclr_captions_per_s"] > 0 and sec["embed"]["plain_captions_per_s"] > 0
    assert sec["topk"]["faiss_gpu"].startswith("skipped") and sec["topk"]["xclr_seconds"] > 0
    assert 0 < sec["step"]["objective_fraction_at_b"] < 1 and 0 < sec["step"]["simclr_fraction_at_b"] < 1
    assert 0 <= sec["loader"]["data_wait_share"] < 1 and sec["loader"]["steps_timed"] > 0
    plain, chunked = sec["memory"]["rows"]
    assert plain["step_vs_plain"] == 1 and "--micro-batch" in chunked["options"] and chunked["step_vs_plain"] > 0
    summary = (tmp_path / "out" / "gpu-check.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary[1:]] == ["embed", "topk", "step", "loader", "memory", "memory"]

