"""The metric registry: every figure xclr-eval reports is registered here once, with what it needs and its table
column, and `score` computes those whose needs one evaluation meets.

A metric (`Metric`) is:

  name      its name in errors; no two metrics share one
  columns   the result keys it gives (results.json), each with its heading (results.md, the console line) and
            whether the console line of each run shows it; no two registered columns share a key or a heading
  compute   `Case` -> {key: value}, exactly its columns' keys in their order (`score` checks)
  needs     what must be given besides features, labels and class captions (`Need`); a metric whose needs are not
            met is left out, not an error
  per_field also scored against each further label field F, as KEY@F with heading "HEADING F"

`score` lists the results by what they are scored against: the primary label's metrics in registry order, then each
further label field's per-field metrics, then the metrics that need captions. The table's columns are the first
run's keys, and `column_name` finds every key's heading here, so a metric cannot reach a table without its column.

A new metric: its formula (in `xclr_eval.metrics` or anywhere) and one `register(Metric(...))` call.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from xclr_eval.metrics import (
    caption_alignment,
    caption_recall,
    class_similarities,
    clustering,
    knn_accuracy,
    linear_probe_accuracy,
    retrieval,
    semantic_alignment,
)
from xclr_train.eval_metrics import halves


class Need(enum.Enum):
    """What a metric needs beyond features, the primary labels and the class captions' embeddings."""

    CAPTIONS = "caption ids and their embeddings (xclr-eval: --queries, with captions on both sides)"
    CLUSTERING = "the clustering metrics asked for (xclr-eval: --clustering)"
    LINEAR_PROBE = "the linear probes asked for (xclr-eval: --linear-probe)"


@dataclass(frozen=True)
class Column:
    """One result key, its heading in results.md and on the console, and whether the console line shows it."""

    key: str
    heading: str
    shown: bool = False

    def for_field(self, field_name: str) -> Column:
        """The column of this key scored against the further label field `field_name` (never on the console)."""
        return Column(f"{self.key}@{field_name}", f"{self.heading} {field_name}")


@dataclass(frozen=True)
class Inputs:
    """One encoder's evaluation: features (n, d), primary labels (n,) indexing the classes, the class captions'
    unit-norm embeddings `text` (C, e) and the seed of the split, k-means, probe and sampling.

    `query` (bool (n,)) marks the query rows, the others being the database; None splits the set once
    (`xclr_train.eval_metrics.halves`). `more_labels` are further label fields (n,) each. Caption ids `caption` (n,)
    index the unit-norm rows of `caption_embeddings`; both or neither. `clustering` and `linear_probe` False leave out
    the metrics that need them."""

    features: np.ndarray
    labels: np.ndarray
    text: np.ndarray
    seed: int
    query: np.ndarray | None = None
    more_labels: Mapping[str, np.ndarray] = field(default_factory=dict)
    caption: np.ndarray | None = None
    caption_embeddings: np.ndarray | None = None
    clustering: bool = True
    linear_probe: bool = True

    def __post_init__(self) -> None:
        if (self.caption is None) != (self.caption_embeddings is None):
            raise ValueError("caption ids and caption embeddings come together")

    @property
    def available(self) -> frozenset[Need]:
        met = {Need.CAPTIONS: self.caption is not None, Need.CLUSTERING: self.clustering,
               Need.LINEAR_PROBE: self.linear_probe}
        return frozenset(need for need, given in met.items() if given)


@dataclass(frozen=True)
class Case:
    """What a metric computes from: the inputs, the database and query row indices `db` and `q`, the labels it is
    scored against (the primary ones, or a further field's) and the primary classes' centroid similarities
    `learned` (C, C) and caption similarities `target` (C, C)."""

    inputs: Inputs
    labels: np.ndarray
    db: np.ndarray
    q: np.ndarray
    learned: np.ndarray
    target: np.ndarray

    def halves(self, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(database features, their y, query features, their y); y defaults to the labels scored."""
        y = self.labels if y is None else y
        x = self.inputs.features
        return x[self.db], y[self.db], x[self.q], y[self.q]


@dataclass(frozen=True)
class Metric:
    """One registered metric (module docstring)."""

    name: str
    columns: tuple[Column, ...]
    compute: Callable[[Case], Mapping[str, float]]
    needs: frozenset[Need] = frozenset()
    per_field: bool = False

    def __post_init__(self) -> None:
        if not self.columns:
            raise TypeError(f"metric {self.name!r} registers no column")
        if self.per_field and Need.CAPTIONS in self.needs:
            raise TypeError(f"metric {self.name!r}: a per-field metric is scored against labels, not captions")


@dataclass(frozen=True)
class Scores:
    """One encoder's results: {key: value} in `score`'s order, and the class similarity matrices (rounded lists)."""

    metrics: dict[str, float]
    class_similarity: dict[str, list]


METRICS: dict[str, Metric] = {}  # name -> metric, in registration order


def register(metric: Metric) -> None:
    """Add `metric` to the registry; a name, key or heading another metric has is refused here, at import."""
    columns = [c for m in [*METRICS.values(), metric] for c in m.columns]
    keys, headings = [c.key for c in columns], [c.heading for c in columns]
    taken = sorted({k for k in keys if keys.count(k) > 1} | {h for h in headings if headings.count(h) > 1})
    if metric.name in METRICS or taken:
        raise TypeError(f"metric {metric.name!r} clashes with a registered one: {', '.join(taken) or 'its name'}")
    METRICS[metric.name] = metric


def column_name(key: str) -> str:
    """The table heading of result key `key`: its column's, or for KEY@FIELD of a per-field metric, "HEADING FIELD"."""
    for metric in METRICS.values():
        for column in metric.columns:
            if column.key == key:
                return column.heading
    base, _, field_name = key.rpartition("@")
    for metric in METRICS.values():
        for column in metric.columns:
            if metric.per_field and column.key == base:
                return column.for_field(field_name).heading
    raise KeyError(f"no registered metric gives {key!r}")


def shown(metrics: Mapping[str, float]) -> list[Column]:
    """The columns the console line shows, in registry order, of those `metrics` holds."""
    return [c for m in METRICS.values() for c in m.columns if c.shown and c.key in metrics]


def score(inputs: Inputs) -> Scores:
    """Every registered metric whose needs `inputs` meets (module docstring). Raises ValueError for a class without
    images, and for a set that cannot be split or scored (the message is one line, for the user)."""
    classes = len(inputs.text)
    missing = sorted(set(range(classes)) - set(np.unique(inputs.labels).tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no image in the evaluation set")
    labels = inputs.labels
    db, q = halves(labels, inputs.query, inputs.seed)
    learned, target = class_similarities(inputs.features, labels, classes), inputs.text @ inputs.text.T
    case = Case(inputs, labels, db, q, learned, target)
    results: dict[str, float] = {}
    for metric, field_name in _order(inputs):
        values = metric.compute(case if field_name is None else replace(case, labels=inputs.more_labels[field_name]))
        if list(values) != [c.key for c in metric.columns]:
            raise TypeError(f"metric {metric.name!r} gave {list(values)}, not its columns")
        for column in metric.columns:
            results[column.key if field_name is None else column.for_field(field_name).key] = values[column.key]
    return Scores(results, {"learned": learned.round(5).tolist(), "target": target.round(5).tolist()})


def _order(inputs: Inputs) -> Iterator[tuple[Metric, str | None]]:
    """(metric, further label field or None) in result order (module docstring)."""
    usable = [m for m in METRICS.values() if m.needs <= inputs.available]
    yield from ((m, None) for m in usable if Need.CAPTIONS not in m.needs)
    for field_name in inputs.more_labels:
        yield from ((m, field_name) for m in usable if m.per_field)
    yield from ((m, None) for m in usable if Need.CAPTIONS in m.needs)


register(Metric("knn_accuracy", (Column("knn_accuracy", "kNN", shown=True),),
                lambda c: {"knn_accuracy": knn_accuracy(*c.halves())}, per_field=True))
register(Metric("linear_probe_accuracy", (Column("linear_probe_accuracy", "linear", shown=True),),
                lambda c: {"linear_probe_accuracy": linear_probe_accuracy(*c.halves(), c.inputs.seed)},
                per_field=True, needs=frozenset({Need.LINEAR_PROBE})))
register(Metric("retrieval", (Column("precision@1", "P@1"), Column("precision@10", "P@10"),
                              Column("recall@10", "R@10"), Column("mAP", "mAP", shown=True)),
                lambda c: retrieval(*c.halves())))
register(Metric("clustering", (Column("kmeans_ari", "ARI"), Column("kmeans_nmi", "NMI"),
                               Column("silhouette", "silhouette"), Column("davies_bouldin", "DB (lower)"),
                               Column("dunn", "Dunn")),
                lambda c: clustering(c.inputs.features, c.labels, c.inputs.seed), needs=frozenset({Need.CLUSTERING})))
register(Metric("semantic_alignment", (Column("semantic_alignment", "semantic rho", shown=True),),
                lambda c: {"semantic_alignment": semantic_alignment(c.learned, c.target)}))
register(Metric("caption_recall", (Column("caption_R@1", "caption R@1", shown=True),
                                   Column("caption_R@5", "caption R@5")),
                lambda c: caption_recall(*c.halves(c.inputs.caption)), needs=frozenset({Need.CAPTIONS})))
register(Metric("caption_alignment", (Column("caption_alignment", "caption rho", shown=True),),
                lambda c: {"caption_alignment": caption_alignment(
                    c.inputs.features[c.q], c.inputs.caption[c.q], c.inputs.caption_embeddings, c.inputs.seed)},
                needs=frozenset({Need.CAPTIONS})))
