"""Options defined once: a frozen dataclass whose fields carry their command-line help, choices and valid range.

`xclr-train`'s options are the fields of `xclr_train.config.TrainConfig` and of the objectives' Args
(`xclr_train.objectives.base`). A field

    batch_size: int = option(256, "Samples per rank per step.", rule=AT_LEAST_ONE)

is the option ``--batch-size`` with that default and help; `click_option` makes the click option from the field, so a
default or a help text is written in one place. `Checked.__post_init__` checks each field's choices and rule when the
dataclass is built, then `check()` (rules across fields): a bad value fails before any work, with one line
(`TrainError`) naming the option. None means "not given" and is not checked. A field made without `option()` or
`required()` (no help) is no command-line option.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, get_args

import click

from xclr_train.errors import TrainError


@dataclass(frozen=True)
class Rule:
    """A valid range: `test(value)` must hold; `says` completes "--option ...", e.g. "must be positive"."""
    test: Callable[[Any], bool]
    says: str


POSITIVE = Rule(lambda v: v > 0, "must be positive")
NON_NEGATIVE = Rule(lambda v: v >= 0, "must be 0 or more")
FRACTION = Rule(lambda v: 0 <= v < 1, "must be in [0, 1)")
AT_LEAST_ONE = Rule(lambda v: v >= 1, "must be at least 1")


def option(default: Any, help: str, choices: Collection[str] | None = None, rule: Rule | None = None) -> Any:
    """A field that is the option --NAME (the field's name): its default, help text, choices and valid range."""
    return field(default=default, metadata={"help": help, "choices": choices, "rule": rule})


def required(help: str) -> Any:
    """A field that is a required option --NAME (no default)."""
    return field(metadata={"help": help, "choices": None, "rule": None})


def flag(name: str) -> str:
    """The option of field `name`: --name-with-dashes."""
    return "--" + name.replace("_", "-")


def either(names: list[str]) -> str:
    """"a", "a or b", "a, b or c"."""
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def is_option(f: Field) -> bool:
    return "help" in f.metadata


@dataclass(frozen=True)
class Checked:
    """Base of an options dataclass: checks each option's choices and rule, then `check()`."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if not is_option(f) or getattr(self, f.name) is None:
                continue
            value, choices, rule = getattr(self, f.name), f.metadata["choices"], f.metadata["rule"]
            if choices is not None and value not in choices:
                raise TrainError(f"{flag(f.name)} must be one of {', '.join(choices)}, got {value!r}")
            if rule is not None and not rule.test(value):
                raise TrainError(f"{flag(f.name)} {rule.says}{self.scope()}, got {value}")
        self.check()

    def scope(self) -> str:
        """What a range error adds after "must be ...", e.g. " for --loss simclr"."""
        return ""

    def check(self) -> None:
        """Rules that involve several options; raise TrainError."""


def value_type(hint: Any) -> Any:
    """int for `int | None`, the type itself otherwise."""
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def click_option(f: Field, kind: Any, **overrides: Any) -> Callable[[Callable], Callable]:
    """The click option of field `f` of type `kind`: required without a default, a --name/--no-name switch for a
    bool, a choice where the field lists choices; `overrides` replace click arguments (another default or help)."""
    default = None if f.default is MISSING else f.default
    settings: dict[str, Any] = {"help": f.metadata["help"], "default": default, "required": f.default is MISSING}
    name = flag(f.name)
    if kind is bool:
        name = f"{name}/--no-{name[2:]}"
    else:
        settings["type"] = click.Choice(list(f.metadata["choices"])) if f.metadata["choices"] else kind
    return click.option(name, f.name, **(settings | overrides))
