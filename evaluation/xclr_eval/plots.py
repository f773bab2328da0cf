"""PNG figures: learned vs target class similarities, training curves from a run's metrics.jsonl, a bar chart
comparing runs, and held-out queries with their nearest database images under each run. Each returns the path it
wrote (atomically)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402

from xclr_schemas.atomic import write_atomic  # noqa: E402

CURVES = {"loss": "loss", "graph_hits": "graph hits per anchor", "target_same_caption": "target mass on same caption",
          "samples_per_s": "samples / s", "eval/knn_accuracy": "in-run kNN accuracy (xclr-train --eval-data)"}
BARS = ("knn_accuracy", "knn_accuracy@category", "linear_probe_accuracy", "mAP", "kmeans_nmi", "caption_R@1",
        "semantic_alignment", "caption_alignment")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def similarity_heatmaps(learned: np.ndarray, target: np.ndarray, classnames: list[str], title: str,
                        path: Path) -> Path:
    """Learned (image centroids) and target (class captions) cosine similarities side by side, off-diagonal colour
    range shared per panel so the ordering of class pairs is what shows."""
    fig, axes = plt.subplots(1, 2, figsize=(6 + 0.8 * len(classnames), 2.5 + 0.3 * len(classnames)),
                             layout="constrained")
    off = ~np.eye(len(learned), dtype=bool)
    for ax, matrix, name in zip(axes, (learned, target), ("learned (image features)", "target (class captions)")):
        image = ax.imshow(matrix, cmap="viridis", vmin=matrix[off].min(), vmax=matrix[off].max())
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(classnames)), classnames, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classnames)), classnames, fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def training_curves(metrics_jsonl: Path, title: str, path: Path) -> Path:
    """One panel per logged quantity of CURVES present in the run's metrics, against the step."""
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    keys = [k for k in CURVES if any(k in row for row in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(row["step"], row[key]) for row in rows if key in row]
        ax.plot(*zip(*points), marker=".")
        ax.set_xlabel("step")
        ax.set_title(CURVES[key], fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def compare_runs(results: dict[str, dict], title: str, path: Path) -> Path:
    """Grouped bars: one group per metric of BARS that every run has, one bar per run (mean over seeds with min-max
    whiskers when a run's value is a list)."""
    names = list(results)
    bars = [m for m in BARS if all(m in results[name] for name in names)]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(1.6 * len(bars) + 2, 3.4))
    for i, name in enumerate(names):
        values = [np.atleast_1d(results[name][m]) for m in bars]
        means = [v.mean() for v in values]
        errors = np.array([[m - v.min() for m, v in zip(means, values)], [v.max() - m for m, v in zip(means, values)]])
        ax.bar(np.arange(len(bars)) + i * width, means, width, yerr=errors if errors.any() else None, label=name,
               color=plt.get_cmap("tab20")(i % 20))
    ax.set_xticks(np.arange(len(bars)) + 0.4 - width / 2, [m.replace("_", " ") for m in bars], fontsize=8)
    ax.legend(fontsize=7, ncol=1 + len(names) // 12, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def nearest_images(queries: list, neighbours: dict[str, list[list]], same: dict[str, np.ndarray],
                   captions: list[str], path: Path) -> Path:
    """One block of rows per query: the query image (with its caption), then for each run its nearest database
    images, framed green where `same[run][q, r]` (the neighbour shows the query's caption) and red elsewhere.
    `queries`: PIL images; `neighbours[run][q]`: PIL images, nearest first."""
    runs = list(neighbours)
    width = max(len(row) for rows in neighbours.values() for row in rows)
    fig, axes = plt.subplots(len(queries) * len(runs), width + 1, figsize=(1.1 * (width + 1) + 1.2,
                             1.1 * len(queries) * len(runs)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for q, query in enumerate(queries):
        top = axes[q * len(runs), 0]
        top.imshow(query)
        top.set_title(captions[q][:28], fontsize=6)
        for r, run in enumerate(runs):
            row = axes[q * len(runs) + r]
            row[1].set_title(run, fontsize=6, loc="left")  # above its row: a run name can be longer than a column
            for n, image in enumerate(neighbours[run][q]):
                row[n + 1].imshow(image)
                row[n + 1].set_axis_on()
                row[n + 1].set_xticks([])
                row[n + 1].set_yticks([])
                for spine in row[n + 1].spines.values():
                    spine.set_edgecolor("tab:green" if same[run][q, n] else "tab:red")
                    spine.set_linewidth(2)
    fig.suptitle("held-out queries (left) and their nearest database images (green: same caption)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
