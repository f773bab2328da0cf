"""`xclr-eval`: the command line, built from `xclr_eval.options.EvalOptions` (one option per field, its help and
default theirs); it parses, then calls `xclr_eval.evaluation.run`, which does the work (and whose docstring says
what OUT holds)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import get_type_hints

import click

from xclr_eval.errors import EvalError
from xclr_eval.evaluation import run
from xclr_eval.options import EvalOptions, option_flag


def eval_options(command: Callable) -> Callable:
    """One click parameter per field of EvalOptions: the CHECKPOINT arguments, then the options in field order."""
    types = get_type_hints(EvalOptions)
    for f in reversed(fields(EvalOptions)):
        meta = f.metadata
        if meta["argument"]:
            command = click.argument(f.name, nargs=-1, required=True)(command)
            continue
        kind = (click.Choice(meta["choices"]) if meta["choices"] else
                click.IntRange(min=meta["minimum"]) if meta["minimum"] is not None else
                int if types[f.name] is int else None)
        default = {"required": True} if f.default is MISSING else {"default": f.default}
        command = click.option(option_flag(f), f.name, type=kind, multiple=isinstance(f.default, tuple),
                               help=meta["help"] or None, **default)(command)
    return command


@click.command(context_settings={"show_default": True})
@eval_options
def main(**given) -> None:
    """Backbone features of each CHECKPOINT on a labelled set: kNN and linear-probe accuracy, retrieval,
    clustering and semantic alignment, as JSON, Markdown and plots in OUT."""
    try:
        run(EvalOptions(**given))
    except EvalError as exc:
        raise click.ClickException(str(exc)) from None
