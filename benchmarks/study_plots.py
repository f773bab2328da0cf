"""The emoji study's two pictures beyond xclr-eval's: every grid point as subcategory kNN against caption alignment
(does any method dominate?), and each run's learning curve from its in-run evaluation (has it flattened?)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import study_plan as plan  # noqa: E402

from xclr_schemas.names import METRICS  # noqa: E402


@dataclass(frozen=True)
class Style:
    """How one run name is drawn in both pictures: a method's colour, bold when it is the frozen choice; the
    untrained floors grey crosses (+ for open_clip's tower)."""

    colour: object
    marker: str
    bold: bool
    label: str | None


def _style(run: str, chosen: set[str]) -> Style:
    method = run.split("@")[0]
    if method in plan.FLOORS:
        return Style("grey", "x" if method == plan.FLOOR else "+", False, f"untrained ({method})")
    colours = dict(zip(plan.METHODS, plt.get_cmap("tab10").colors))
    return Style(colours.get(method, "black"), "o", run in chosen, run if run in chosen else None)


def grid_scatter(per_run: dict[str, dict[str, list[float]]], out: Path) -> None:
    """`per_run`: the validation regime's table ({run name: {metric: values over seeds, "seed": the seeds}}); one dot
    per grid point at its GRID_SEED run (the seed every point has; the matrix adds others to the chosen points only),
    one colour per method, the frozen choice ringed, the untrained floors grey crosses."""
    chosen = {c.run for c in plan.load_choices().values()}
    fig, ax = plt.subplots(figsize=(7, 5))
    for run, values in sorted(per_run.items()):
        if plan.GRID_SEED not in values["seed"]:
            continue
        at, style = values["seed"].index(plan.GRID_SEED), _style(run, chosen)
        ax.scatter(values["caption_alignment"][at], values["knn_accuracy"][at], color=style.colour,
                   marker=style.marker, s=70 if style.bold else 40, linewidths=1.5,
                   edgecolors=None if style.marker != "o" else "black" if style.bold else "none",
                   label=style.label if style.marker != "o" else None)
    for method in plan.METHODS:
        ax.scatter([], [], color=_style(method, set()).colour, label=method)
    ax.set_xlabel("caption alignment (Spearman rho)")
    ax.set_ylabel("subcategory kNN accuracy")
    ax.set_title("Validation grid (Google held out): every point of every method; ringed = chosen")
    ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)


def curves(corpus_root: Path, out_dir: Path) -> list[Path]:
    """One picture per regime with in-run evaluations: validation kNN against step, each run name's mean over its
    finished seeds, one colour per method (as in the grid picture), the frozen choices bold, the untrained floors
    grey. Returns the pictures written."""
    chosen = {c.run for c in plan.load_choices().values()}
    written = []
    for regime in sorted(p for p in corpus_root.iterdir() if (p / "runs").is_dir()):
        lines: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for metrics in (regime / "runs").glob("*/" + METRICS):
            if not (metrics.parent / plan.RUN_DONE).exists():
                continue
            name = metrics.parent.name.rsplit("-s", 1)[0]
            for record in map(json.loads, metrics.read_text().splitlines()):
                if "eval/knn_accuracy" in record:
                    lines[name][record["step"]].append(record["eval/knn_accuracy"])
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, points in sorted(lines.items()):
            steps = sorted(points)
            style = _style(name, chosen)
            ax.plot(steps, [statistics.mean(points[s]) for s in steps], marker=style.marker, color=style.colour,
                    markersize=4 if style.bold else 2 if style.marker == "o" else 7,
                    linewidth=2.2 if style.bold else 0.8,
                    alpha=1.0 if style.bold or style.marker != "o" else 0.4, label=style.label,
                    linestyle="-" if style.marker == "o" else "none")
        ax.set_xlabel("step")
        ax.set_ylabel("in-run kNN accuracy (held-out vendor)")
        ax.set_title(f"{regime.name}: bold = each method's frozen choice, faint = its other grid points")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        path = out_dir / f"curves-{regime.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
