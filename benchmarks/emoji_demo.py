"""The main job (`scripts/run_demo.sh`): one seed of the emoji study's own setting, and the study's verdict on it.

Its setting was fixed with the plan, before any test-rotation run: Twitter held out (DEMO_HELDOUT), GRID_STEPS
steps, X-CLR and SimCLR at their frozen choices, trained and evaluated exactly as the study's runs
(`study.train`, `study.evaluate`), so that its figures are one more seed of the study's.

The verdict is the study's, over its seeds of this setting (benchmarks/results/emoji-study.json): with d the mean
difference X-CLR - SimCLR of a metric and se = sqrt(s_x^2 / n_x + s_s^2 / n_s) from the seeds' sample standard
deviations, a method is ahead when |d| > 2 se, else the two are level within seed noise. This run's own one-seed
difference agrees with the study when it lies within 2 sqrt(s_x^2 + s_s^2) of d (the spread of a one-seed
difference). Without three seeds of this setting in the study, it says so and prints no verdict.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import study_plan as plan

DEMO_HELDOUT = "twitter"
METRICS = {"knn_accuracy": "kNN subcategory", "knn_accuracy@category": "kNN category",
           "linear_probe_accuracy": "linear subcategory", "mAP": "mAP", "caption_R@1": "caption R@1",
           "caption_alignment": "caption rho"}
MIN_SEEDS = 3


@dataclass(frozen=True)
class Verdict:
    """One metric: the study's mean difference and its standard error, and this run's difference."""

    study_diff: float
    se: float
    one_seed_sd: float
    run_diff: float

    @property
    def says(self) -> str:
        if abs(self.study_diff) <= 2 * self.se:
            return "level (within seed noise)"
        return "X-CLR ahead" if self.study_diff > 0 else "SimCLR ahead"

    @property
    def run_agrees(self) -> bool:
        return abs(self.run_diff - self.study_diff) <= 2 * self.one_seed_sd


def verdict(xclr: dict[str, list[float]], simclr: dict[str, list[float]], run_diff: float, key: str) -> Verdict:
    """The verdict on metric `key` from the study's per-seed values of each method (study.tabulate's lists)."""
    x, s = xclr[key], simclr[key]
    se = (statistics.variance(x) / len(x) + statistics.variance(s) / len(s)) ** 0.5
    sd = (statistics.variance(x) + statistics.variance(s)) ** 0.5
    return Verdict(statistics.mean(x) - statistics.mean(s), se, sd, run_diff)


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


def report(runs: dict[str, dict], study_table: dict, choices: dict[str, plan.Choice], regime: str) -> None:
    """Print this run's X-CLR and SimCLR figures beside the study's seeds of `regime`, and the verdict."""
    xclr_run, simclr_run = (runs[f"{choices[m].run}-s0"]["metrics"] for m in ("xclr", "simclr"))
    per_run = study_table.get(regime, {})
    xs, ss = per_run.get(choices["xclr"].run, {}), per_run.get(choices["simclr"].run, {})
    seeds = min(len(xs.get("seed", [])), len(ss.get("seed", [])))
    print(f"\n{DEMO_HELDOUT} held out, {regime.rsplit('-', 1)[1]} steps: this run (seed 0) and the study "
          f"({seeds} seeds, benchmarks/results/emoji-study.json)\n")
    print(f"{'metric':20} {'X-CLR':>7} {'SimCLR':>7} {'diff':>7}   {'study diff':>10} {'2 se':>6}   study says")
    for key, label in METRICS.items():
        d = xclr_run[key] - simclr_run[key]
        if seeds < MIN_SEEDS:
            print(f"{label:20} {xclr_run[key]:7.3f} {simclr_run[key]:7.3f} {d:+7.3f}   (the study has {seeds} seeds)")
            continue
        v = verdict(xs, ss, d, key)
        print(f"{label:20} {xclr_run[key]:7.3f} {simclr_run[key]:7.3f} {d:+7.3f}   {v.study_diff:+10.3f} "
              f"{2 * v.se:6.3f}   {v.says}{'' if v.run_agrees else ' (this run differs by more than seed noise)'}")
    if seeds < MIN_SEEDS:
        print(f"\nThe study has fewer than {MIN_SEEDS} seeds of this setting, so no verdict is printed "
              "(docs/emoji-study.md).")
