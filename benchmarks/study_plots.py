"""The emoji study's two pictures beyond xclr-eval's: every grid point as subcategory kNN against caption alignment
(does any method dominate?), and each run's learning curve from its in-run evaluation (has it flattened?)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import study_plan as plan  # noqa: E402

from xclr_schemas.names import METRICS  # noqa: E402


def grid_scatter(per_run: dict[str, dict[str, list[float]]], out: Path) -> None:
    """`per_run`: the validation regime's table ({run name: {metric: values over seeds, "seed": the seeds}}); one dot
    per grid point at its GRID_SEED run (the seed every point has; the matrix adds others to the chosen points only),
    one colour per method, the frozen choice ringed, the untrained floors grey crosses."""
    chosen = {c.run for c in plan.load_choices().values()}
    fig, ax = plt.subplots(figsize=(7, 5))
    colours = dict(zip(plan.METHODS, plt.get_cmap("tab10").colors))
    for run, values in sorted(per_run.items()):
        if plan.GRID_SEED not in values["seed"]:
            continue
        method, at = run.split("@")[0], values["seed"].index(plan.GRID_SEED)
        x, y = values["caption_alignment"][at], values["knn_accuracy"][at]
        if method.startswith(plan.FLOOR):
            ax.scatter(x, y, marker="x" if method == plan.FLOOR else "+", color="grey", s=60,
                       label=f"untrained ({'convnet' if method == plan.FLOOR else 'test_resnet'})")
        elif method in colours:
            ax.scatter(x, y, color=colours[method], s=70 if run in chosen else 35,
                       edgecolors="black" if run in chosen else "none", linewidths=1.5)
    for method, colour in colours.items():
        ax.scatter([], [], color=colour, label=method)
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
    colours = dict(zip(plan.METHODS, plt.get_cmap("tab10").colors))
    written = []
    for regime in sorted(p for p in corpus_root.iterdir() if (p / "runs").is_dir()):
        lines: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for metrics in (regime / "runs").glob("*/" + METRICS):
            if not (metrics.parent / "done.json").exists():
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
            means = [statistics.mean(points[s]) for s in steps]
            method = name.split("@")[0]
            if method.startswith(plan.FLOOR):
                ax.plot(steps, means, marker="x" if method == plan.FLOOR else "+", color="grey", linestyle="none",
                        label=name)
            else:
                bold = name in chosen
                ax.plot(steps, means, marker="o", markersize=4 if bold else 2, color=colours.get(method, "black"),
                        linewidth=2.2 if bold else 0.8, alpha=1.0 if bold else 0.4, label=name if bold else None)
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
