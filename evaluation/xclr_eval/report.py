"""How results read: the Markdown table of an evaluation (one row per run, one column per metric) and the console
line of one run, both with the headings of `xclr_eval.registry`."""

from __future__ import annotations

from collections.abc import Mapping

from xclr_eval.registry import column_name, shown


def markdown_table(runs: dict[str, dict]) -> str:
    """runs: name -> {"loss": str, "step": int, "metrics": {...}}; one column per metric of the first run."""
    keys = list(next(iter(runs.values()))["metrics"])
    lines = ["| run | loss | step | " + " | ".join(column_name(k) for k in keys) + " |",
             "|---|---|---:|" + "---:|" * len(keys)]
    for name, run in runs.items():
        cells = [f"{run['metrics'][key]:.3f}" for key in keys]
        lines.append(f"| {name} | {run['loss']} | {run['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def console_line(name: str, metrics: Mapping[str, float]) -> str:
    """`NAME: HEADING value  HEADING value ...` for the registry's shown columns that `metrics` holds."""
    return f"{name}: " + "  ".join(f"{c.heading} {metrics[c.key]:.3f}" for c in shown(metrics))
