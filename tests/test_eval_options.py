"""xclr_eval.options: the command line is generated from EvalOptions (one definition of each option's default and
help), and the options are checked when EvalOptions is built, before anything is loaded."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest
from click.testing import CliRunner

from xclr_eval.cli import main
from xclr_eval.errors import EvalError
from xclr_eval.options import EvalOptions

CKPT = "runs/a/checkpoints/latest.pt"


def test_every_field_is_one_click_parameter_with_its_default_and_help():
    params = {p.name: p for p in main.params}
    assert list(params) == [f.name for f in fields(EvalOptions)]
    for f in fields(EvalOptions):
        param = params[f.name]
        if f.metadata["argument"]:
            assert param.nargs == -1 and param.required
        elif f.default is MISSING:
            assert param.required
        else:
            assert param.default == f.default and not param.required
            assert (param.help or "") == f.metadata["help"]
    help_text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    assert "--label-field TEXT" in help_text and "--clustering / --no-clustering" in help_text
    assert "--limit INTEGER" in help_text and "[default: a photo of a {}]" in help_text


@pytest.mark.parametrize(("given", "message"), [
    ({"checkpoints": (CKPT, CKPT)}, "two checkpoints would share a name in a, a"),
    ({"checkpoints": (CKPT, "runs/a/checkpoints/epoch-0001.pt"), "save_features": "f.npz"},
     "--save-features takes one checkpoint"),
    ({"template": "a photo"}, "--template 'a photo' has no {} for the class name"),
    ({"limit": 1}, "--limit must be at least 2, got 1"),
    ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    ({"device": "tpu"}, "--device must be one of auto, cpu, cuda, got 'tpu'"),
    ({"checkpoints": ()}, "no CHECKPOINT to evaluate"),
])
def test_bad_options_are_refused_when_built(given, message):
    with pytest.raises(EvalError) as caught:
        EvalOptions(**{"checkpoints": (CKPT,), "data": "d", "out": "o", **given})
    assert str(caught.value) == message


def test_run_names_follow_the_run_directory():
    options = EvalOptions(checkpoints=(CKPT, "runs/a/checkpoints/epoch-0002.pt", "elsewhere/model.pt"), data="d",
                          out="o")
    assert options.names == ["a", "a-epoch-0002", "model"]
