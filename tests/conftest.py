"""Shared fixtures: the real packaged model, real WordNet captions, and running the real CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download; subprocesses inherit it


@pytest.fixture(scope="session")
def model_path() -> str:
    from xclr_prep.embed_stage import default_model

    return default_model()


@pytest.fixture(scope="session")
def encoder(model_path):
    from xclr_prep.encoder import Encoder

    return Encoder(model_path, "cpu", batch_size=64)


@pytest.fixture(scope="session")
def wordnet():
    """The first 20k WordNet captions (key, caption) as a pyarrow Table."""
    from xclr_prep.sample_corpora import wordnet_captions

    return wordnet_captions(limit=20_000)


def run_prep(*args, check: bool = True, timeout: float = 900, **popen) -> subprocess.CompletedProcess:
    """Run the real `xclr-prep` command line in a subprocess."""
    cmd = [sys.executable, "-m", "xclr_prep", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(f"xclr-prep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    """A real tar with the given (member name, bytes), in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def assert_same_result(a, b) -> None:
    """Two loaded embed directories hold the same data (embeddings equal up to fp16 rounding)."""
    assert a.captions == b.captions
    assert a.samples.equals(b.samples)
    assert a.manifest["counts"] == b.manifest["counts"]
    assert a.manifest["parts"] == b.manifest["parts"]
    np.testing.assert_allclose(a.embeddings.astype(np.float32), b.embeddings.astype(np.float32), atol=2e-3)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture
def prep():
    return run_prep


REPO = Path(__file__).resolve().parents[1]
