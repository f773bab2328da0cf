"""`xclr-eval`: the command line, built from `xclr_eval.options.EvalOptions` (one option per field, its help and
default theirs); it parses, then calls `xclr_eval.evaluation.run`, which does the work (and whose docstring says
what OUT holds)."""

from __future__ import annotations

import click

from xclr_eval.errors import EvalError
from xclr_eval.evaluation import run
from xclr_eval.options import EvalOptions
from xclr_schemas.options import UserError, click_options


@click.command(context_settings={"show_default": True})
@click_options(EvalOptions)
def main(**given) -> None:
    """Backbone features of each CHECKPOINT on a labelled set: kNN and linear-probe accuracy, retrieval,
    clustering and semantic alignment, as JSON, Markdown and plots in OUT."""
    try:
        run(EvalOptions(**given))
    except EvalError as exc:
        raise UserError(str(exc)) from None
