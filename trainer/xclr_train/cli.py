"""`xclr-train`: train an image encoder on xclr training shards, on a CPU, a GPU or under torchrun."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import Field, fields, replace
from typing import get_type_hints

import click

from xclr_schemas import storage
from xclr_schemas.options import UserError, click_parameter, flag, is_option, value_type
from xclr_schemas.out_lock import OutputBusy, exclusive
from xclr_train.config import TrainConfig
from xclr_train.errors import TrainError
from xclr_train.objectives import OBJECTIVES
from xclr_train.objectives.base import either
from xclr_train.preemption import PREEMPTED_EXIT, Preempted, Preemption
from xclr_train.train import train


def general_options(command: Callable) -> Callable:
    """One option per option field of `TrainConfig` (`xclr_train.config`), in field order, and the objectives'
    options where its `loss_options` field stands (after --loss)."""
    hints = get_type_hints(TrainConfig)
    for f in reversed(fields(TrainConfig)):
        if f.name == "loss_options":
            command = objective_options(command)
        elif is_option(f):
            command = click_parameter(f, value_type(hints[f.name]))(command)
    return command


def objective_options(command: Callable) -> Callable:
    """One option per field of the objectives' Args (`xclr_train.objectives.base`), the help and defaults theirs.
    Each defaults to None, "not given": the objective then uses its own default."""
    takers: dict[str, list[tuple[str, Field, type]]] = {}
    for name, cls in OBJECTIVES.items():
        types = get_type_hints(cls.Args)
        for f in fields(cls.Args):
            takers.setdefault(f.name, []).append((name, f, value_type(types[f.name])))
    for option_name, users in reversed(sorted(takers.items())):
        _, first, kind = users[0]
        for name, f, t in users:
            if t != kind or f.metadata["choices"] != first.metadata["choices"]:
                raise TypeError(f"{flag(option_name)}: {name} gives it another type or choices than {users[0][0]}")
        command = click_parameter(first, kind, default=None, help=_help([(name, f) for name, f, _ in users]))(command)
    return command


def _help(users: list[tuple[str, Field]]) -> str:
    """The takers' shared help with their defaults, or each taker's own help and default."""
    helps = {f.metadata["help"] for _, f in users}
    if len(helps) > 1:
        return "; ".join(f"{name}: {f.metadata['help'].rstrip('.')} (default {f.default})" for name, f in users) + "."
    defaults = {f.default for _, f in users}
    default = str(users[0][1].default) if len(defaults) == 1 else ", ".join(f"{n} {f.default}" for n, f in users)
    return f"{helps.pop()} For --loss {either([n for n, _ in users])}; default {default}."


def config_of(options: dict) -> TrainConfig:
    """The TrainConfig of the command's parsed options: the general ones by name, the objective's given ones
    (not None) as its `loss_options`. TrainError for a bad value."""
    general = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in options.items() if k not in general and v is not None}
    return TrainConfig(**{k: v for k, v in options.items() if k in general}, loss_options=given)


@click.command(context_settings={"show_default": True, "max_content_width": 120})
@general_options
def main(**options) -> None:
    """Train an image encoder with X-CLR (or a baseline) on shards written by `xclr-prep graph`.

    Multi-GPU / multi-node: launch with torchrun, e.g. `torchrun --nproc-per-node 8 -m xclr_train ...`.
    SIGTERM or SIGUSR1 (a scheduler's preemption) stops every rank after the step in progress, saves latest.pt at
    that step and exits with status 75: the same command with --resume latest goes on from there.
    """
    try:
        with Preemption() as preemption:  # from here on a stop signal is recorded (a URL's pull included)
            cfg = config_of(options)
            if cfg.resume not in (None, "latest"):
                cfg = replace(cfg, resume=str(storage.fetch(cfg.resume)))
            writer = os.environ.get("RANK", "0") == "0"  # the main rank writes the run (torchrun sets RANK)
            # one writer per run directory (xclr_schemas.out_lock): the main rank's lock, from before a URL's pull
            # to its last push; the other ranks of the same job do not take it
            with exclusive(cfg.out) if writer else nullcontext(), \
                    storage.local_dir(cfg.out, publish=writer) as run:
                publish = (lambda: storage.push(run, cfg.out)) if storage.is_url(cfg.out) else None
                last = train(replace(cfg, out=str(run)), preemption, after_save=publish)
    except (TrainError, OutputBusy) as exc:
        raise UserError(str(exc)) from None
    except Preempted as exc:
        click.echo(f"xclr-train: {exc}", err=True)
        sys.exit(PREEMPTED_EXIT)
    if last:
        click.echo(f"done: step {last['step']}, loss {last['loss']:.4f}; run in {cfg.out}")
