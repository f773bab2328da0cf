"""`xclr-eval`'s options, defined once: each field of `EvalOptions` is the option --field-name (or the CHECKPOINT
arguments), with its default, help text, choices and least value in `option()`; `xclr_eval.cli` builds the command
line from these fields, so the help text is theirs. Values are checked when the dataclass is built."""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from functools import cached_property
from typing import Any

from xclr_eval.errors import EvalError
from xclr_eval.naming import run_name
from xclr_schemas.names import CAPTION_MODEL


def option(default: Any = MISSING, help: str = "", *, choices: tuple[str, ...] | None = None,
           minimum: int | None = None, flag: str | None = None, argument: bool = False) -> Any:
    """One field of EvalOptions: its default (none: required), help text, choices, least value, the flag when it is
    not --field-name (a repeatable option's singular, a boolean's --on/--off pair) and whether it is the positional
    CHECKPOINT arguments."""
    return field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum, "flag": flag,
                                            "argument": argument})


def option_flag(f: Field) -> str:
    """The option that sets field `f`: its `option(flag=...)`, else --field-name."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """One `xclr-eval` command (docs/eval.md)."""

    checkpoints: tuple[str, ...] = option(argument=True)
    data: str = option(help="Fashion-MNIST IDX directory, an image folder per class, or WebDataset tars with labels in "
                       "KEY.json (see --label-field; a directory, sizes.json or brace pattern; a URL must be a "
                       "directory).")
    queries: str | None = option(None, "A held-out query set (same forms as --data; e.g. another image style): DATA "
                                 "is then the database, and caption retrieval and caption alignment are measured when "
                                 "both have captions (KEY.txt).")
    label_fields: tuple[str, ...] = option(("label",), "KEY.json field(s) of tar sets to use as labels: the first is "
                                           "the primary label of every metric, each further one adds kNN and "
                                           "linear-probe accuracy. Integer fields index --classnames, string fields "
                                           "name their classes.", flag="--label-field")
    out: str = option(help="Results directory (a path or URL).")
    classnames: str | None = option(None, "Class names in label order, one per line [default: DATA/classnames.txt, "
                                    "folder names, or Fashion-MNIST's].")
    template: str = option("a photo of a {}", "Class caption for the semantic-alignment target.")
    text_model: str | None = option(None, "sentence-transformers model of the class captions [default: packaged "
                                    f"{CAPTION_MODEL}, as xclr-prep].")
    split: str = option("test", "Which IDX split (Fashion-MNIST).", choices=("test", "train"))
    limit: int | None = option(None, "Only the first N labelled images.", minimum=2)
    save_features: str | None = option(None, "Write features and labels to this .npz (one checkpoint only).")
    clustering: bool = option(True, "k-means ARI/NMI, silhouette, Davies-Bouldin and Dunn (10 k-means restarts: the "
                              "slowest metrics when there are many classes).", flag="--clustering/--no-clustering")
    device: str = option("auto", choices=("auto", "cpu", "cuda"))
    batch_size: int = option(256, minimum=1)
    seed: int = option(0, "Train/test split, k-means and probe seed.")

    def __post_init__(self) -> None:
        for f in fields(self):
            value, choices, minimum = getattr(self, f.name), f.metadata["choices"], f.metadata["minimum"]
            if choices is not None and value not in choices:
                raise EvalError(f"{option_flag(f).split('/')[0]} must be one of {', '.join(choices)}, got {value!r}")
            if minimum is not None and value is not None and value < minimum:
                raise EvalError(f"{option_flag(f).split('/')[0]} must be at least {minimum}, got {value}")
        if not self.checkpoints:
            raise EvalError("no CHECKPOINT to evaluate")
        if len(set(self.names)) < len(self.names):
            raise EvalError(f"two checkpoints would share a name in {', '.join(self.names)}")
        if self.save_features is not None and len(self.checkpoints) > 1:
            raise EvalError("--save-features takes one checkpoint")
        if "{}" not in self.template:
            raise EvalError(f"--template {self.template!r} has no {{}} for the class name")

    @cached_property
    def names(self) -> list[str]:
        """Each checkpoint's run name in the results (`xclr_eval.naming`)."""
        return [run_name(c) for c in self.checkpoints]
