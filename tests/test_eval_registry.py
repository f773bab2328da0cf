"""xclr_eval.registry: a metric registered once reaches the results, the table and the console line; every registered
column is scored and has its heading; a clash or a metric that breaks its contract is caught before any table."""

from __future__ import annotations

import numpy as np
import pytest

from xclr_eval import registry
from xclr_eval.registry import Case, Column, Inputs, Metric, Need, column_name, register, score
from xclr_eval.report import console_line, markdown_table


@pytest.fixture
def own_registry(monkeypatch):
    """The registry as the package builds it, restored after the test."""
    monkeypatch.setattr(registry, "METRICS", dict(registry.METRICS))


def every_need(fields=("coarse", "parity")) -> Inputs:
    """Two well separated classes of 30 with captions, two further label fields and clustering: every need met."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 15)
    x = np.eye(8)[labels] * 5 + rng.normal(size=(60, 8))
    caption = np.arange(60) // 2
    more = {"coarse": labels // 2, "parity": labels % 2}
    return Inputs(features=x, labels=labels, text=np.eye(4)[:, :3] + 0.1, seed=0, query=np.arange(60) % 2 == 1,
                  more_labels={f: more[f] for f in fields}, caption=caption,
                  caption_embeddings=np.linalg.qr(rng.normal(size=(30, 30)))[0])


def test_every_registered_column_is_scored_in_order_and_has_its_heading():
    """Primary-label metrics in registry order, then each further field's per-field ones (field by field), then the
    caption metrics; the table has one heading per key, taken from the registration."""
    got = score(every_need()).metrics
    primary = [c.key for m in registry.METRICS.values() if Need.CAPTIONS not in m.needs for c in m.columns]
    per_field = [c.for_field(f).key for f in ("coarse", "parity") for m in registry.METRICS.values() if m.per_field
                 for c in m.columns]
    captions = [c.key for m in registry.METRICS.values() if Need.CAPTIONS in m.needs for c in m.columns]
    assert list(got) == primary + per_field + captions
    assert per_field == ["knn_accuracy@coarse", "linear_probe_accuracy@coarse", "knn_accuracy@parity",
                         "linear_probe_accuracy@parity"]
    assert all(np.isfinite(v) for v in got.values())
    header = markdown_table({"run": {"loss": "xclr", "step": 1, "metrics": got}}).splitlines()[0]
    assert header.split(" | ")[3:-1] == [column_name(k) for k in list(got)[:-1]]
    assert column_name("knn_accuracy@coarse") == "kNN coarse" and column_name("caption_R@5") == "caption R@5"
    assert console_line("run", got) == "run: " + "  ".join(
        f"{h} {got[k]:.3f}" for k, h in [("knn_accuracy", "kNN"), ("linear_probe_accuracy", "linear"), ("mAP", "mAP"),
                                         ("semantic_alignment", "semantic rho"), ("caption_R@1", "caption R@1"),
                                         ("caption_alignment", "caption rho")])


def test_a_new_metric_is_one_registration(own_registry):
    """A metric registered here, and nowhere else, reaches the scores, the table and the console line; with
    per_field it is also scored against each further field; its needs decide when it is scored."""
    def spread(case: Case) -> dict[str, float]:
        return {"spread": float(case.labels.max() - case.labels.min())}

    register(Metric("spread", (Column("spread", "label spread", shown=True),), spread, per_field=True))
    register(Metric("captions_seen", (Column("captions_seen", "captions seen"),),
                    lambda c: {"captions_seen": float(len(np.unique(c.inputs.caption)))},
                    needs=frozenset({Need.CAPTIONS})))
    got = score(every_need()).metrics
    assert got["spread"] == 3 and got["spread@coarse"] == 1 and got["spread@parity"] == 1
    assert got["captions_seen"] == 30 and list(got)[-1] == "captions_seen"
    table = markdown_table({"run": {"loss": "xclr", "step": 1, "metrics": got}})
    assert "| label spread |" in table and "| label spread coarse |" in table and "| captions seen |" in table
    assert "  label spread 3.000" in console_line("run", got)
    plain = every_need()
    no_captions = score(Inputs(features=plain.features, labels=plain.labels, text=plain.text, seed=0)).metrics
    assert "spread" in no_captions and "captions_seen" not in no_captions


def test_clashes_are_refused_when_registering(own_registry):
    with pytest.raises(TypeError, match="clashes with a registered one: knn_accuracy$"):
        register(Metric("another_knn", (Column("knn_accuracy", "kNN again"),), lambda c: {}))
    with pytest.raises(TypeError, match="registered one: kNN$"):
        register(Metric("same_heading", (Column("new_key", "kNN"),), lambda c: {}))
    with pytest.raises(TypeError, match="registered one: its name$"):
        register(Metric("retrieval", (Column("other", "other"),), lambda c: {}))
    with pytest.raises(TypeError, match="registered one: twice$"):
        register(Metric("twice", (Column("twice", "one"), Column("twice", "two")), lambda c: {}))
    assert "another_knn" not in registry.METRICS and "twice" not in registry.METRICS
    with pytest.raises(TypeError, match="not captions"):
        Metric("bad", (Column("bad", "bad"),), lambda c: {}, needs=frozenset({Need.CAPTIONS}), per_field=True)
    with pytest.raises(KeyError, match="no registered metric"):
        column_name("never_registered")


def test_a_metric_that_gives_other_keys_than_its_columns_stops_at_its_first_score(own_registry):
    register(Metric("sloppy", (Column("sloppy", "sloppy"),), lambda c: {"slopy": 1.0}))
    with pytest.raises(TypeError, match="'sloppy' gave \\['slopy'\\]"):
        score(every_need())
