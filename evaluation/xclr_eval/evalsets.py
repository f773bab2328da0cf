"""The evaluation sets xclr-eval reads: defined in `xclr_train.evalsets`, so that the trainer's in-run evaluation
(`xclr-train --eval-data`) reads exactly the same sets, below the one-way rule xclr_train <- xclr_eval."""

from xclr_train.evalsets import EvalSet, EvalSetError, align, caption_ids, combine, load_eval_set, load_sets

__all__ = ["EvalSet", "EvalSetError", "align", "caption_ids", "combine", "load_eval_set", "load_sets"]
