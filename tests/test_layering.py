"""The dependency rule of docs/design.md (Packages and the one-way rule):
xclr_prep -> xclr_schemas <- xclr_train <- xclr_eval."""

import subprocess
import sys

import pytest

HEAVY = ["ray", "faiss", "sentence_transformers", "torch", "xclr_prep", "xclr_train"]


def imported_after(code: str) -> set[str]:
    probe = f"import sys; {code}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_schemas_import_none_of_the_heavy_stacks():
    mods = imported_after("import xclr_schemas; xclr_schemas.load_embed_dir")
    assert not mods & set(HEAVY), mods & set(HEAVY)
    assert {"numpy", "pyarrow"} <= mods


@pytest.mark.parametrize("module", ["xclr_train", "xclr_train.cli"])
def test_trainer_needs_no_prep_or_eval_stack(module):
    mods = imported_after(f"import {module}")
    assert not mods & {"ray", "faiss", "sentence_transformers", "xclr_prep", "xclr_eval", "sklearn", "matplotlib"}


def test_eval_needs_no_prep_stack():
    mods = imported_after("import xclr_eval.cli")
    assert "xclr_train" in mods
    assert not mods & {"ray", "faiss", "xclr_prep"}


def test_prep_driver_does_not_load_the_model_stack():
    """The driver process orchestrates; only the actors import torch and sentence-transformers."""
    mods = imported_after("import xclr_prep.cli, xclr_prep.embed_stage, xclr_prep.graph_stage")
    assert "ray" in mods
    assert not mods & {"torch", "sentence_transformers", "xclr_train"}
