"""Options defined once: a frozen dataclass whose fields carry their command-line help, choices and valid range.

A command's options are the fields of its dataclass (`xclr-prep embed`: `EmbedOptions` and `CorpusSpec`; `xclr-prep
graph`: `GraphOptions` and `ShardOptions`). A field

    batch_size: int = option(256, "Captions per encode batch.", rule=POSITIVE)

is the option ``--batch-size`` with that default and help; `click_options` makes the click options from the fields,
so a default or a help text is written in one place. `Checked.__post_init__` checks each field's choices and rule
when the dataclass is built, then `check()` (rules across fields): a bad value fails before any work, with one line
of the dataclass's `error` class naming the option. A field made with `field()` (no `option()`) is no command-line
option: an argument, or a value the command fills in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, get_args, get_type_hints

import click


@dataclass(frozen=True)
class Rule:
    """A valid range: `test(value)` must hold for a value that is not None; `says` completes "--option ..."."""
    test: Callable[[Any], bool]
    says: str


POSITIVE = Rule(lambda v: v > 0, "must be positive")
NON_NEGATIVE = Rule(lambda v: v >= 0, "must be 0 or more")
FRACTION = Rule(lambda v: 0 <= v < 1, "must be in [0, 1)")
UNIT_INTERVAL = Rule(lambda v: 0 < v <= 1, "must be in (0, 1]")


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, rule: Rule | None = None,
           name: str | None = None, envvar: str | None = None) -> Any:
    """A field that is the option --NAME (the field's name, or `name`): its default, help, choices and range.
    `envvar`: the environment variable click reads when the option is not given."""
    return field(default=default, metadata={"help": help, "choices": choices, "rule": rule, "flag": name,
                                            "envvar": envvar})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def option_flag(f: Field) -> str:
    """The command-line flag of field `f`."""
    return f.metadata.get("flag") or flag(f.name)


def is_option(f: Field) -> bool:
    return "help" in f.metadata


@dataclass(frozen=True)
class Checked:
    """Base of an options dataclass: checks each option's choices and rule, then `check()`."""
    error: ClassVar[type[Exception]] = ValueError

    def __post_init__(self) -> None:
        for f in fields(self):
            if not is_option(f):
                continue
            value, choices, rule = getattr(self, f.name), f.metadata["choices"], f.metadata["rule"]
            if value is None:  # "not given": the consumer's default
                continue
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


def _value_type(hint: Any) -> Any:
    """int for `int | None`, the type itself otherwise."""
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def click_options(*classes: type) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per option field of `classes`, in field order; its keyword is the
    field's name. A bool field is a flag: ``--name`` when it defaults to False, ``--name/--no-name`` when True."""
    def decorate(command: Callable) -> Callable:
        for cls in reversed(classes):
            hints = get_type_hints(cls)
            for f in reversed([f for f in fields(cls) if is_option(f)]):
                command = _click_option(f, _value_type(hints[f.name]))(command)
        return command
    return decorate


def _click_option(f: Field, kind: Any) -> Callable[[Callable], Callable]:
    name, meta = option_flag(f), f.metadata
    default = None if f.default is MISSING else f.default
    extra: dict[str, Any] = {"help": meta["help"], "envvar": meta["envvar"]}
    if kind is bool:
        if default is False:
            return click.option(name, f.name, is_flag=True, default=False, **extra)
        return click.option(f"{name}/--no-{name[2:]}", f.name, default=default, show_default=False, **extra)
    extra["type"] = click.Choice(meta["choices"]) if meta["choices"] else kind
    return click.option(name, f.name, default=default, show_default=default is not None, **extra)
