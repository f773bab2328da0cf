"""The main job's closing lines: X-CLR against SimCLR on the held-out vendor, set against the quality study.

The main job trains one seed of each; the study (benchmarks/results/study.json, regime emoji heldout-openmoji) trained
three seeds of each at the same budget. A one-seed difference d = X-CLR - SimCLR is called a win only when
|d| > 2 sigma, sigma = sqrt(s_xclr^2 + s_simclr^2) from the study's seed standard deviations; otherwise it is within
seed noise and no ranking is printed.

    .venv/bin/python benchmarks/verdict.py runs/demo/eval/results.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

STUDY = Path(__file__).parent / "results" / "study.json"
REGIME = ("emoji", "heldout-openmoji")
METRICS = {"knn_accuracy": "kNN subcategory", "knn_accuracy@category": "kNN category",
           "linear_probe_accuracy": "linear subcategory", "caption_R@1": "caption R@1",
           "caption_alignment": "caption rho"}


def main(results_file: str) -> None:
    runs = json.loads(Path(results_file).read_text())["runs"]
    xclr, simclr = runs["emoji-xclr"]["metrics"], runs["emoji-simclr"]["metrics"]
    study = json.loads(STUDY.read_text()).get(REGIME[0], {}).get(REGIME[1], {})
    seeds = {m: study.get(m, {}) for m in ("xclr-groups", "simclr")}
    print(f"\nOpenMoji queries against google + twitter images (one seed each, "
          f"{runs['emoji-xclr']['step']} steps):\n")
    print(f"{'metric':20} {'X-CLR':>7} {'SimCLR':>7} {'diff':>7}   study, 3 seeds: diff (2 sigma)   verdict")
    for key, label in METRICS.items():
        d = xclr[key] - simclr[key]
        x, s = seeds["xclr-groups"].get(key), seeds["simclr"].get(key)
        if not (x and s and len(x) > 1 and len(s) > 1):
            print(f"{label:20} {xclr[key]:7.3f} {simclr[key]:7.3f} {d:+7.3f}   (no study figures)")
            continue
        sigma = (statistics.stdev(x) ** 2 + statistics.stdev(s) ** 2) ** 0.5
        verdict = "within seed noise" if abs(d) <= 2 * sigma else ("X-CLR ahead" if d > 0 else "SimCLR ahead")
        print(f"{label:20} {xclr[key]:7.3f} {simclr[key]:7.3f} {d:+7.3f}   "
              f"{statistics.mean(x) - statistics.mean(s):+.3f} ({2 * sigma:.3f}){'':14}{verdict}")
    print("\nThe study's verdict, with CLIP, SupCon and a second held-out vendor: docs/quality-study.md")


if __name__ == "__main__":
    main(sys.argv[1])
