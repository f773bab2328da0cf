"""plots/nearest.png: a few held-out queries, each beside its nearest database images under every run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xclr_eval import plots
from xclr_eval.metrics import normalise
from xclr_train.eval_features import decode

NEAREST_QUERIES = 6  # rows of plots/nearest.png
NEAREST_SHOWN = 5  # database images per query and run


def nearest(features: np.ndarray, rows: np.ndarray, query: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    """{query row: its NEAREST_SHOWN nearest database rows by cosine} for NEAREST_QUERIES query rows drawn with
    `seed` (the same rows for every run). Rows index the evaluated set, whose query rows bool `query` marks;
    `features` holds its decodable `rows`."""
    x = normalise(features)
    is_query = query[rows]
    chosen = np.random.default_rng(seed).permutation(np.flatnonzero(query))[:NEAREST_QUERIES]
    db = np.flatnonzero(~is_query)
    position = {row: i for i, row in enumerate(rows)}
    result = {}
    for q in sorted(chosen):
        if q in position:
            sims = x[db] @ x[position[q]]
            result[int(q)] = rows[db[np.argsort(-sims)[:NEAREST_SHOWN]]]
    return result


def plot_nearest(found: dict[str, dict[int, np.ndarray]], images: list, caption: np.ndarray, captions: list[str],
                 path: Path) -> None:
    """The queries every run of `found` ({run: `nearest`}) has, framed green where a neighbour's caption id
    (`caption`, per row of `images`) is the query's; `captions` are the texts shown."""
    queries = sorted(set.intersection(*(set(n) for n in found.values())))
    shown = {run: [[decode(images[r]) for r in n[q]] for q in queries] for run, n in found.items()}
    same = {run: np.array([caption[n[q]] == caption[q] for q in queries]) for run, n in found.items()}
    plots.nearest_images([decode(images[q]) for q in queries], shown, same, [captions[q] for q in queries], path)
