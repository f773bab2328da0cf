"""The Markdown table of an evaluation: one row per run, one column per scalar metric."""

from __future__ import annotations

COLUMNS = {"knn_accuracy": "kNN", "linear_probe_accuracy": "linear", "precision@1": "P@1", "precision@10": "P@10",
           "recall@10": "R@10", "mAP": "mAP", "kmeans_ari": "ARI", "kmeans_nmi": "NMI", "silhouette": "silhouette",
           "davies_bouldin": "DB (lower)", "dunn": "Dunn", "semantic_alignment": "semantic rho",
           "caption_R@1": "caption R@1", "caption_R@5": "caption R@5", "caption_alignment": "caption rho"}


def column_name(key: str) -> str:
    """The table heading of a metric: COLUMNS, or "kNN FIELD" / "linear FIELD" for a further label field."""
    metric, _, field_name = key.partition("@")
    return COLUMNS.get(key) or f"{COLUMNS[metric]} {field_name}"


def markdown_table(runs: dict[str, dict]) -> str:
    """runs: name -> {"loss": str, "step": int, "metrics": {...}}; one column per metric of the first run."""
    keys = list(next(iter(runs.values()))["metrics"])
    lines = ["| run | loss | step | " + " | ".join(column_name(k) for k in keys) + " |",
             "|---|---|---:|" + "---:|" * len(keys)]
    for name, run in runs.items():
        cells = [f"{run['metrics'][key]:.3f}" for key in keys]
        lines.append(f"| {name} | {run['loss']} | {run['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
