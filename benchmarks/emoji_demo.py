"""The main job (`scripts/run_demo.sh`): one seed of the emoji study's own setting, and the study's verdict on it.

Its setting: Twitter held out (DEMO_HELDOUT), GRID_STEPS steps, X-CLR and SimCLR (COMPARED) at their frozen choices,
trained and evaluated exactly as the study's runs (`study.train`, `study.evaluate`), so that its figures are the
study's seed 0 of that setting again. (The rotation was fixed with the plan, before any test-rotation run of the
plan, but after the superseded study had run on both test rotations; the demo therefore prints the study's verdict
for its own setting, from the demo stage's seeds, and for both test rotations at the frozen budget, from the
matrix's: `settings`.)

The verdict is the study's, over its seeds of a setting (benchmarks/results/emoji-study.json), on the primary metric
(subcategory kNN; the other metrics are shown, not judged): with d the mean difference X-CLR - SimCLR and Welch's
t = d / se, se = sqrt(s_x^2 / n_x + s_s^2 / n_s) from the seeds' sample variances, a method is ahead when |t| exceeds
the two-sided 95% quantile of Student's t at Welch's degrees of freedom, else the two are level within seed noise.
Each setting's verdict is its own test at 95% (not a joint claim over them). Without MIN_SEEDS seeds of a setting in
the study, it says so and prints no verdict.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import study
import study_plan as plan
from scipy import stats

from xclr_eval.report import column_name

DEMO_HELDOUT = "twitter"
COMPARED = ("xclr", "simclr")
SHOWN = ("knn_accuracy", "knn_accuracy@category", "linear_probe_accuracy", "mAP", "caption_R@1", "caption_alignment")
MIN_SEEDS = 3


@dataclass(frozen=True)
class Verdict:
    """Welch's test of the study's seeds of X-CLR against SimCLR on one metric."""

    diff: float  # mean X-CLR - mean SimCLR
    t: float
    critical: float  # the two-sided 95% quantile of Student's t at Welch's degrees of freedom

    @property
    def says(self) -> str:
        if abs(self.t) <= self.critical:
            return "level (within seed noise)"
        return "X-CLR ahead" if self.diff > 0 else "SimCLR ahead"


def verdict(xclr: list[float], simclr: list[float]) -> Verdict:
    """The verdict from each method's per-seed values (at least two each)."""
    vx, vs = statistics.variance(xclr) / len(xclr), statistics.variance(simclr) / len(simclr)
    diff = statistics.mean(xclr) - statistics.mean(simclr)
    if vx + vs == 0:  # no spread at all: any difference is beyond it
        return Verdict(diff, 0.0 if diff == 0 else math.copysign(math.inf, diff), 0.0)
    df = (vx + vs) ** 2 / (vx ** 2 / (len(xclr) - 1) + vs ** 2 / (len(simclr) - 1))
    return Verdict(diff, diff / (vx + vs) ** 0.5, float(stats.t.ppf(0.975, df)))


def show_neighbours(shards: Path, shown: int = 4, k: int = 3) -> None:
    """The first `shown` training captions of the shards and their `k` nearest captions in the graph, read back
    with the plain webdataset library: what X-CLR's targets see besides an image's own caption."""
    import webdataset as wds

    from xclr_schemas import load_npy

    sizes = json.loads((shards / "sizes.json").read_text())
    text, neighbours = {}, {}
    for sample in wds.WebDataset([str(shards / name) for name in sizes], shardshuffle=False):
        caption = json.loads(sample["json"])["caption_id"]
        text[caption] = sample["txt"].decode()
        if len(neighbours) < shown and caption not in neighbours:
            neighbours[caption] = load_npy(sample["nbr.npy"])[:k]
    print("\nA few training captions and their nearest captions in the graph (cosine similarity):")
    for caption, top in neighbours.items():
        print(f"  {text[caption]!r:32} " + ", ".join(f"{text.get(int(n['id']), '?')!r} {n['sim']:.2f}"
                                                     for n in top))


def report(runs: dict[str, dict], seed: int, study_table: dict, choices: dict[str, plan.Choice],
           regime: str) -> None:
    """Print this run's X-CLR and SimCLR figures (seed `seed`) beside the study's seeds of `regime`, then the study's
    verdict on the primary metric for each of `settings()`."""
    mine = {m: runs[f"{choices[m].run}-s{seed}"]["metrics"] for m in COMPARED}
    study_runs = {m: study_table.get(regime, {}).get(choices[m].run, {}) for m in COMPARED}
    print(f"\n{DEMO_HELDOUT} held out, {plan.GRID_STEPS} steps: this run (seed {seed}) and the study's seeds "
          "(benchmarks/results/emoji-study.json)\n")
    print(f"{'metric':24} {'X-CLR':>7} {'SimCLR':>7} {'diff':>7}   study: X-CLR, SimCLR (mean ± sd over seeds)")
    for key in SHOWN:
        x, s = mine["xclr"][key], mine["simclr"][key]
        print(f"{column_name(key):24} {x:7.3f} {s:7.3f} {x - s:+7.3f}   "
              + ", ".join(_mean_sd(study_runs[m].get(key, [])) for m in COMPARED))
    print(f"\nThe study's verdict on {column_name(plan.PRIMARY)} (Welch's t over its seeds, 95%):")
    for vendor, steps in settings():
        per_run = study_table.get(study.regime_name(vendor, steps), {})
        xs, ss = (per_run.get(choices[m].run, {}).get(plan.PRIMARY, []) for m in COMPARED)
        if min(len(xs), len(ss)) < MIN_SEEDS:
            print(f"  {vendor} held out, {steps} steps: the study has {min(len(xs), len(ss))} seeds of it, fewer than "
                  f"{MIN_SEEDS}: no verdict (docs/emoji-study.md)")
            continue
        v = verdict(xs, ss)
        print(f"  {vendor} held out, {steps} steps: {v.says} (X-CLR - SimCLR {v.diff:+.3f}, t = {v.t:.1f}, 95% at "
              f"{v.critical:.1f}; {len(xs)} and {len(ss)} seeds)")


def settings() -> list[tuple[str, int]]:
    """The settings whose verdict the main job prints: its own (DEMO_HELDOUT at GRID_STEPS, the demo stage's runs),
    then every test rotation at the frozen budget (the matrix's runs; none before the budget is frozen), as
    (held-out vendor, steps)."""
    budget = plan.load_budget()
    matrix = [(v, budget) for v in plan.TEST] if budget is not None else []
    return list(dict.fromkeys([(DEMO_HELDOUT, plan.GRID_STEPS), *matrix]))


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return "-" if not values else f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
