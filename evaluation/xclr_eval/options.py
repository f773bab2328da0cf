"""`xclr-eval`'s options, defined once (`xclr_schemas.options`): each field of `EvalOptions` is the option
--field-name (or the CHECKPOINT arguments), with its default, help text, choices and range; `xclr_eval.cli` builds
the command line from these fields, so the help text is theirs. Values are checked when the dataclass is built."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from xclr_eval.errors import EvalError
from xclr_eval.naming import run_name
from xclr_schemas.names import CAPTION_MODEL
from xclr_schemas.options import Checked, argument, at_least, option, required
from xclr_train.eval_features import EVAL_BATCH
from xclr_train.eval_metrics import DEFAULT_SEED


@dataclass(frozen=True, kw_only=True)
class EvalOptions(Checked):
    """One `xclr-eval` command (docs/eval.md)."""
    error = EvalError

    checkpoints: tuple[str, ...] = argument()
    data: str = required("Fashion-MNIST IDX directory, an image folder per class, or WebDataset tars with labels in "
                       "KEY.json (see --label-field; a directory, sizes.json or brace pattern; a URL must be a "
                       "directory).")
    queries: str | None = option(None, "A held-out query set (same forms as --data; e.g. another image style): DATA "
                                 "is then the database, and caption retrieval and caption alignment are measured when "
                                 "both have captions (KEY.txt).")
    label_fields: tuple[str, ...] = option(("label",), "KEY.json field(s) of tar sets to use as labels: the first is "
                                           "the primary label of every metric, each further one adds kNN and "
                                           "(unless --no-linear-probe) linear-probe accuracy. Integer fields index "
                                           "--classnames, string fields name their classes.", name="--label-field")
    out: str = required("Results directory (a path or URL).")
    classnames: str | None = option(None, "Class names in label order, one per line [default: DATA/classnames.txt, "
                                    "folder names, or Fashion-MNIST's].")
    template: str = option("a photo of a {}", "Class caption for the semantic-alignment target.")
    text_model: str | None = option(None, "sentence-transformers model of the class captions [default: packaged "
                                    f"{CAPTION_MODEL}, as xclr-prep].")
    split: str = option("test", "Which IDX split (Fashion-MNIST).", ("test", "train"))
    limit: int | None = option(None, "Only the first N labelled images.", rule=at_least(2))
    save_features: str | None = option(None, "Write features and labels to this .npz (one checkpoint only).")
    clustering: bool = option(True, "k-means ARI/NMI, silhouette, Davies-Bouldin and Dunn (10 k-means restarts: the "
                              "slowest metrics when there are many classes).")
    linear_probe: bool = option(True, "Linear-probe accuracy: a logistic regression fitted on the database (or the "
                                "split's first half) and scored on the rest, per label field (slow on large sets).")
    device: str = option("auto", "Where the backbones run (auto: cuda when torch sees a GPU, else cpu).",
                         ("auto", "cpu", "cuda"))
    batch_size: int = option(EVAL_BATCH, "Images per forward pass.", rule=at_least(1))
    seed: int = option(DEFAULT_SEED, "Train/test split, k-means and probe seed.")

    def check(self) -> None:
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
