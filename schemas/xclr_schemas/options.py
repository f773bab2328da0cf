"""Options defined once: a frozen dataclass whose fields carry their command-line help, choices and valid range.

Every command of xclr takes its options from such dataclasses (`xclr-prep embed`: `EmbedOptions` and `CorpusSpec`;
`xclr-prep graph`: `GraphOptions` and `ShardOptions`; `xclr-train`: `TrainConfig` and the objectives' Args;
`xclr-eval`: `EvalOptions`). A field

    batch_size: int = option(256, "Captions per encode batch.", rule=POSITIVE)

is the option ``--batch-size`` with that default and help; `click_options` makes the click parameters from the
fields, so a default or a help text is written in one place. `Checked.__post_init__` checks each field's choices and
rule when the dataclass is built, then `check()` (rules across fields): a bad value fails before any work, with one
line of the dataclass's `error` class naming the option. None means "not given" and is not checked.

Kinds of field: `option()` (a default), `required()` (none: the option must be given), `argument()` (the command's
positional arguments, a tuple); a bool option is a flag (``--name``, or ``--name/--no-name`` when it defaults to
True); a tuple default makes a repeatable option. A field made with plain `field()` or a bare default is no
command-line option: a value the command fills in.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, get_args, get_type_hints

import click


@dataclass(frozen=True)
class Rule:
    """A valid range: `test(value)` must hold; `says` completes "--option ...", e.g. "must be positive"."""
    test: Callable[[Any], bool]
    says: str


POSITIVE = Rule(lambda v: v > 0, "must be positive")
NON_NEGATIVE = Rule(lambda v: v >= 0, "must be 0 or more")
FRACTION = Rule(lambda v: 0 <= v < 1, "must be in [0, 1)")
UNIT_INTERVAL = Rule(lambda v: 0 < v <= 1, "must be in (0, 1]")


def at_least(low: int) -> Rule:
    return Rule(lambda v: v >= low, f"must be at least {low}")


def option(default: Any, help: str, choices: Collection[str] | None = None, rule: Rule | None = None,
           name: str | None = None, envvar: str | None = None) -> Any:
    """A field that is the option --NAME (the field's name, or `name`): its default, help, choices and range.
    `envvar`: the environment variable click reads when the option is not given."""
    return field(default=default, metadata=_meta(help, choices, rule, name, envvar))


def required(help: str, name: str | None = None) -> Any:
    """A field that is an option the command must be given (no default)."""
    return field(metadata=_meta(help, None, None, name, None))


def argument() -> Any:
    """A field that is the command's positional arguments (a tuple, at least one)."""
    return field(metadata={**_meta("", None, None, None, None), "argument": True})


def _meta(help: str, choices: Collection[str] | None, rule: Rule | None, name: str | None,
          envvar: str | None) -> dict:
    return {"help": help, "choices": tuple(choices) if choices is not None else None, "rule": rule, "flag": name,
            "envvar": envvar, "argument": False}


def flag(name: str) -> str:
    """The option of field `name`: --name-with-dashes."""
    return "--" + name.replace("_", "-")


def option_flag(f: Field) -> str:
    """The command-line flag of field `f`."""
    return f.metadata.get("flag") or flag(f.name)


def is_option(f: Field) -> bool:
    """Whether field `f` is a command-line parameter (an option or the arguments)."""
    return "help" in f.metadata


@dataclass(frozen=True)
class Checked:
    """Base of an options dataclass: checks each option's choices and rule, then `check()`."""
    error: ClassVar[type[Exception]] = ValueError

    def __post_init__(self) -> None:
        for f in fields(self):
            if not is_option(f) or getattr(self, f.name) is None:  # None: "not given", the consumer's default
                continue
            value, choices, rule = getattr(self, f.name), f.metadata["choices"], f.metadata["rule"]
            if choices is not None and value not in choices:
                raise self.error(f"{option_flag(f)} must be one of {', '.join(choices)}, got {value!r}")
            if rule is not None and not rule.test(value):
                raise self.error(f"{option_flag(f)} {rule.says}{self.scope()}, got {value}")
        self.check()

    def scope(self) -> str:
        """What a range error adds after "must be ...", e.g. " for --loss simclr"."""
        return ""

    def check(self) -> None:
        """Rules that involve several options; raise `self.error`."""


def value_type(hint: Any) -> Any:
    """The type a field's values have: int for `int | None`, str for `tuple[str, ...]`, the hint otherwise."""
    args = [a for a in get_args(hint) if a is not type(None) and a is not Ellipsis]
    return value_type(args[0]) if args else hint


def click_options(*classes: type, show_default: bool = True) -> Callable[[Callable], Callable]:
    """A decorator adding one click parameter per option field of `classes`, in field order; its keyword is the
    field's name."""
    def decorate(command: Callable) -> Callable:
        for cls in reversed(classes):
            hints = get_type_hints(cls)
            for f in reversed([f for f in fields(cls) if is_option(f)]):
                command = click_parameter(f, value_type(hints[f.name]), show_default)(command)
        return command
    return decorate


def click_parameter(f: Field, kind: Any, show_default: bool = True, default: Any = MISSING,
                    help: str | None = None) -> Callable[[Callable], Callable]:
    """The click parameter of field `f`, whose values are of type `kind`; `default` and `help` replace the field's
    (an option several dataclasses share, e.g. one objective option of several objectives)."""
    meta = f.metadata
    if meta["argument"]:
        return click.argument(f.name, nargs=-1, required=True)
    name = option_flag(f)
    default = f.default if default is MISSING else default
    extra: dict[str, Any] = {"help": help or meta["help"] or None, "envvar": meta["envvar"]}
    if f.default is MISSING and f.default_factory is MISSING:
        extra["required"] = True
    else:
        extra.update(default=default, show_default=show_default and default is not None)
    if kind is bool:
        if default is False:
            return click.option(name, f.name, is_flag=True, **{**extra, "show_default": False})
        return click.option(f"{name}/--no-{name[2:]}", f.name, **{**extra, "show_default": False})
    choices = meta["choices"]
    return click.option(name, f.name, type=click.Choice(choices) if choices else kind,
                        multiple=isinstance(default, tuple), **extra)


class UserError(click.ClickException):
    """A command's one-line error for bad input (an option, a data set, a checkpoint): printed as one "Error:" line,
    exit status 2 like click's own usage errors, for every xclr command."""

    exit_code = 2
