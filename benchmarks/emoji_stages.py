"""The emoji study's stages, in the order its plan (study_plan) runs them; `benchmarks/study.py --plan STAGE` runs one.

    grid      the validation rotation's grid, seed GRID_SEED; each method's choice frozen in CHOICES
    budget    the chosen points at BUDGET_LONG steps on the validation rotation; the rule's budget frozen in BUDGET
    matrix    every rotation x seed x method at its chosen point and the frozen budget, with the untrained floor
              (--preset gpu: the GPU regimes instead, ResNet-18 at 64 px, without open_clip's CPU-only runs)
    captions  X-CLR and SimCLR on the test rotations with name+tags captions (the richer-caption ablation)
    low       X-CLR and SimCLR on the test rotations with a third of the emoji (the low-data ablation)
    demo      the main job: X-CLR and SimCLR on the demo's rotation (emoji_demo), with the study's verdict
    report    the tables (RESULTS, its .md) and plots (RESULTS-plots/) of every run under ROOT/emoji

Each stage refuses to start before the choices it needs are frozen, and every run and evaluation is cached under
ROOT (study.train, study.evaluate), so a stage can be stopped and rerun.
"""

from __future__ import annotations

import json
from pathlib import Path

import emoji_demo
import openclip_clip
import study
import study_plan as plan
import study_plots

CORPUS = "emoji"
RESULTS = Path(__file__).resolve().parent / "results" / "emoji-study.json"
ABLATED = ("xclr", "simclr")  # the methods the ablations train


class PlanError(SystemExit):
    """A stage started before what it needs is frozen (exit status 2, one line)."""

    def __init__(self, message: str) -> None:
        print(f"Error: {message}", flush=True)
        super().__init__(2)


def grid(root: Path) -> None:
    base = study.prepare(root, CORPUS, study.regime_name(plan.VALIDATION, plan.GRID_STEPS), ("random",))
    for method, spec in plan.METHODS.items():
        for point in spec.grid:
            _train(base, method, point, plan.GRID_SEED)
        frozen = plan.freeze(plan.select(study.evaluate(root, base, CORPUS)["runs"]))
        print(f"{method}: {frozen[method].point.name} (validation kNN {frozen[method].score:.3f}; "
              f"{', '.join(f'{n} {v:.3f}' for n, v in frozen[method].candidates.items())})", flush=True)
    _floor(root, base, [plan.GRID_SEED])


def budget(root: Path) -> None:
    choices = _choices()
    short = study.regime_name(plan.VALIDATION, plan.GRID_STEPS)
    base = study.prepare(root, CORPUS, study.regime_name(plan.VALIDATION, plan.BUDGET_LONG), ("random",))
    for method, choice in choices.items():
        _train(base, method, choice.point, plan.GRID_SEED)
    long_runs = study.evaluate(root, base, CORPUS)["runs"]
    short_runs = json.loads((root / CORPUS / short / "eval" / "results.json").read_text())["runs"]
    key = f"-s{plan.GRID_SEED}"
    steps = plan.freeze_budget({m: long_runs[c.run + key]["metrics"][plan.PRIMARY]
                                - short_runs[c.run + key]["metrics"][plan.PRIMARY] for m, c in choices.items()})
    print(f"budget: {steps} steps", flush=True)


def matrix(root: Path, seeds: list[int], preset: str) -> None:
    choices, steps = _choices(), _budget() if preset == "cpu" else study.GPU_STEPS
    for vendor in (plan.VALIDATION, *plan.TEST):
        name = study.regime_name(vendor, steps, "gpu" if preset == "gpu" else "")
        base = study.prepare(root, CORPUS, name, ("random",))
        for seed in seeds:
            for method, choice in choices.items():
                if preset == "cpu" or plan.METHODS[method].trainer == plan.XCLR_TRAIN:
                    _train(base, method, choice.point, seed)
        _floor(root, base, seeds)


def ablation(root: Path, seeds: list[int], variant: str) -> None:
    """`variant` "tags" or "low": X-CLR and SimCLR at their choices on the test rotations' variant data."""
    choices, steps = _choices(), _budget()
    for vendor in plan.TEST:
        base = study.prepare(root, CORPUS, study.regime_name(vendor, steps, variant), ("random",))
        for seed in seeds:
            for method in ABLATED:
                _train(base, method, choices[method].point, seed)
        study.evaluate(root, base, CORPUS)


def demo(root: Path, seeds: list[int]) -> None:
    choices, regime = _choices(), study.regime_name(emoji_demo.DEMO_HELDOUT, plan.GRID_STEPS)
    base = study.prepare(root, CORPUS, regime, ("random",))
    emoji_demo.show_neighbours(base / "shards-random")
    for seed in seeds:
        for method in ABLATED:
            _train(base, method, choices[method].point, seed)
    runs = study.evaluate(root, base, CORPUS)["runs"]
    table = json.loads(RESULTS.read_text()).get(CORPUS, {}) if RESULTS.exists() else {}
    emoji_demo.report(runs, table, choices, regime)


def report(root: Path, out: Path = RESULTS) -> None:
    results = {done.parts[-3]: json.loads(done.read_text())
               for done in sorted((root / CORPUS).glob("*/eval/results.json")) if done.parts[-3] in study.PLANNED}
    table = study.tabulate(root, {CORPUS: results})
    runs = sorted({m for regime in table.get(CORPUS, {}).values() for m in regime})
    study.write_report(table, runs, out)
    study_plots.grid_scatter(table[CORPUS].get(study.regime_name(plan.VALIDATION, plan.GRID_STEPS), {}),
                             out.parent / f"{out.stem}-plots" / "grid.png")
    study_plots.curves(root / CORPUS, out.parent / f"{out.stem}-plots")


def _train(base: Path, method: str, point: plan.Point, seed: int) -> None:
    """One run of `method` at `point` on a regime's random-order shards, by the method's trainer (cached)."""
    spec, name = plan.METHODS[method], plan.run_name(method, point)
    if spec.trainer == plan.OPEN_CLIP:
        openclip_clip.train_openclip(base / "shards-random", base / "runs" / f"{name}-s{seed}",
                                     study.CORPORA[CORPUS][base.name].steps, point.lr, seed)
    else:
        study.train(base, CORPUS, name, "random", [*spec.args, *point.args], seed)


def _floor(root: Path, base: Path, seeds: list[int]) -> None:
    for seed in seeds:
        study.train(base, CORPUS, plan.FLOOR, *study.METHODS[plan.FLOOR], seed)
    study.evaluate(root, base, CORPUS)


def _choices() -> dict[str, plan.Choice]:
    choices = plan.load_choices()
    missing = [m for m in plan.METHODS if m not in choices]
    if missing:
        raise PlanError(f"no frozen choice for {', '.join(missing)} in {plan.CHOICES}: run --plan grid first")
    return choices


def _budget() -> int:
    steps = plan.load_budget()
    if steps is None:
        raise PlanError(f"no frozen budget in {plan.BUDGET}: run --plan budget first")
    return steps
