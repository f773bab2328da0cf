"""The main job's closing lines: X-CLR against SimCLR on the held-out vendor, set against the quality study.

The main job trains one seed of each; the study (benchmarks/results/study.json, regime emoji heldout-openmoji) trained
three seeds of each at the same budget. A one-seed difference d = X-CLR - SimCLR is called a win only when
|d| > 2 sigma, sigma = sqrt(s_xclr^2 + s_simclr^2) from the study's seed standard deviations; otherwise it is within
seed noise and no ranking is printed. The untrained backbone's figure (the study's random-init run) is printed beside
them: a method within 2 s of it has not learned that metric at this budget. It ends with the study's longer runs
(LONGER: 600 steps with either vendor held out, 1200 with OpenMoji, 600 with a small ViT; 3 seeds), which this
budget cannot reproduce.

    .venv/bin/python scripts/verdict.py runs/demo/eval/results.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

STUDY = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "study.json"
REGIME = ("emoji", "heldout-openmoji")
LONGER = {"heldout-openmoji-600": "OpenMoji held out, 600 steps", "heldout-twitter-600": "Twitter held out, 600 steps",
          "heldout-openmoji-1200": "OpenMoji held out, 1200 steps",
          "heldout-openmoji-600-vit": "OpenMoji held out, 600 steps, small ViT"}
SHOWN = {"xclr-groups": "X-CLR (groups)", "xclr-random": "X-CLR (random order)", "simclr": "SimCLR",
             "supcon": "SupCon", "clip": "CLIP", "random-init": "untrained"}
METRICS = {"knn_accuracy": "kNN subcategory", "knn_accuracy@category": "kNN category",
           "linear_probe_accuracy": "linear subcategory", "caption_R@1": "caption R@1",
           "caption_alignment": "caption rho"}


def main(results_file: str) -> None:
    runs = json.loads(Path(results_file).read_text())["runs"]
    xclr, simclr = runs["emoji-xclr"]["metrics"], runs["emoji-simclr"]["metrics"]
    study = json.loads(STUDY.read_text()).get(REGIME[0], {}).get(REGIME[1], {})
    seeds = {m: study.get(m, {}) for m in ("xclr-groups", "simclr", "random-init")}
    print(f"\nOpenMoji queries against google + twitter images (one seed each, "
          f"{runs['emoji-xclr']['step']} steps):\n")
    print(f"{'metric':20} {'X-CLR':>7} {'SimCLR':>7} {'diff':>7} {'untrained':>9}   study (3 seeds): diff, 2 sigma"
          "   verdict")
    learned = []
    for key, label in METRICS.items():
        d = xclr[key] - simclr[key]
        x, s, floor = (seeds[m].get(key) for m in ("xclr-groups", "simclr", "random-init"))
        untrained = f"{floor[0]:9.3f}" if floor else f"{'-':>9}"
        if not (x and s and len(x) > 1 and len(s) > 1):
            print(f"{label:20} {xclr[key]:7.3f} {simclr[key]:7.3f} {d:+7.3f} {untrained}   (no study figures)")
            continue
        sigma = (statistics.stdev(x) ** 2 + statistics.stdev(s) ** 2) ** 0.5
        verdict = "within seed noise" if abs(d) <= 2 * sigma else ("X-CLR ahead" if d > 0 else "SimCLR ahead")
        print(f"{label:20} {xclr[key]:7.3f} {simclr[key]:7.3f} {d:+7.3f} {untrained}   "
              f"{statistics.mean(x) - statistics.mean(s):+.3f}, {2 * sigma:.3f}{'':17}{verdict}")
        if floor:
            learned.append(min(xclr[key], simclr[key]) - floor[0] > 2 * max(statistics.stdev(x), statistics.stdev(s)))
    if learned and not all(learned):
        print("\nAt this budget the methods do not leave the untrained backbone behind on every metric, so this run "
              "cannot rank them;\nnor could the study at this budget (docs/emoji-study.md, with CLIP, SupCon and "
              "longer runs).")
    else:
        print("\nThe study's comparison, with CLIP, SupCon and longer runs: docs/emoji-study.md")
    print_longer_runs(json.loads(STUDY.read_text()).get(REGIME[0], {}))


def print_longer_runs(study: dict) -> None:
    """The study's subcategory kNN of its longer runs, mean ± standard deviation over its seeds."""
    print("\nThe study's longer runs (subcategory kNN, mean ± std over seeds; docs/emoji-study.md):")
    for regime, title in LONGER.items():
        runs = study.get(regime, {})
        cells = [f"{label} {_mean_sd(runs[m]['knn_accuracy'])}" for m, label in SHOWN.items() if m in runs]
        print(f"  {title:40} {', '.join(cells) or '(not in the study)'}")


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


if __name__ == "__main__":
    main(sys.argv[1])
