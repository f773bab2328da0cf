"""The Markdown table of an evaluation: one row per run, one column per scalar metric."""

from __future__ import annotations

COLUMNS = {"knn_accuracy": "kNN", "linear_probe_accuracy": "linear", "precision@1": "P@1", "precision@10": "P@10",
           "recall@10": "R@10", "mAP": "mAP", "kmeans_ari": "ARI", "kmeans_nmi": "NMI", "silhouette": "silhouette",
           "davies_bouldin": "DB (lower)", "dunn": "Dunn", "semantic_alignment": "semantic rho"}


def markdown_table(runs: dict[str, dict]) -> str:
    """runs: name -> {"loss": str, "step": int, "metrics": {...}}."""
    lines = ["| run | loss | step | " + " | ".join(COLUMNS.values()) + " |",
             "|---|---|---:|" + "---:|" * len(COLUMNS)]
    for name, run in runs.items():
        cells = [f"{run['metrics'][key]:.3f}" for key in COLUMNS]
        lines.append(f"| {name} | {run['loss']} | {run['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
