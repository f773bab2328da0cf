"""The emoji study's stages, in the order its plan (study_plan) runs them; `benchmarks/study.py --plan STAGE` runs one.

    grid      the validation rotation's grid, seed GRID_SEED (and a method's fifth point where the rule asks for
              one); each method's choice frozen in CHOICES as soon as its points are evaluated
    budget    the chosen points at BUDGET_LONG steps on the validation rotation; the rule's budget frozen in BUDGET
    matrix    every rotation x seed x method at its chosen point and the frozen budget, with the untrained floors,
              the test rotations first (--preset gpu: the GPU regimes instead, ResNet-18 at 64 px, without open_clip's
              CPU-only runs and their floor)
    captions  X-CLR on the test rotations with name+tags captions (the richer-caption ablation; SimCLR does not
              read captions, so the matrix's SimCLR runs are its reference)
    low       X-CLR and SimCLR on the test rotations with a third of the emoji (the low-data ablation), judged on
              the full data's database and held-out images, with the convnet's floor
    demo      the main job: X-CLR and SimCLR on the demo's rotation (emoji_demo), with the study's verdict as
              RESULTS has it (in the study's own root, run report first)
    report    every finished run under ROOT/emoji evaluated (it writes evaluations: never beside another stage),
              then merged into the tables (RESULTS: a run it has of a seed ROOT lacks stays; its .md) and plots
              (RESULTS-plots/)

Each stage refuses to start before the choices it needs are frozen (PlanError), and every run and evaluation is
cached under ROOT (study.train, study.evaluate), so a stage can be stopped and rerun. A root holds one plan's runs.
Each run is evaluated as soon as it is done. With `--keep` (the project's own study, study.py), each evaluated run's
records are kept in KEPT (`keep`), which the repository holds, and the stage starts by restoring the kept runs its
root lacks (`restore`), so that the study goes on where it stopped on any machine, without the checkpoints of the
runs it restored.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import emoji_demo
import openclip_clip
import study
import study_plan as plan
import study_plots

from xclr_schemas.atomic import remove_temporaries, write_atomic, write_json_atomic
from xclr_schemas.names import METRICS

CORPUS = "emoji"
RESULTS = Path(__file__).resolve().parent / "results" / "emoji-study.json"
# Each evaluated run's records, kept beside RESULTS (committed) so that the study resumes on another machine:
# KEPT/REGIME/RUN/ holds the run's METRICS, its EVALUATION and, last, its RUN_DONE.
KEPT = RESULTS.with_name("emoji-runs")
ABLATED = {"tags": ("xclr",), "low": ("xclr", "simclr")}  # the methods each ablation trains
# the floors each ablation trains: the tags regime's images are the core regime's, whose floor the matrix trains
ABLATION_FLOORS = {"tags": (), "low": (plan.FLOOR,)}
RANDOM = ("random",)  # every planned run reads the random-order shards
FLOOR_STEPS = 100  # the floor's steps at lr 0 only settle its BatchNorm statistics


class PlanError(Exception):
    """A stage started before what it needs is frozen (study.py prints it in one line, exit status 2)."""


def grid(root: Path, kept: Path | None = None) -> None:
    base = study.prepare(root, CORPUS, study.regime_name(plan.VALIDATION, plan.GRID_STEPS), RANDOM)
    runs = study.evaluate(base, CORPUS)["runs"] if (base / "runs").is_dir() else {}
    for method in plan.METHODS:
        while points := plan.to_train(method, runs):
            for point in points:
                _train(base, method, point, plan.GRID_SEED, kept)
            runs = study.evaluate(base, CORPUS)["runs"]
        choice = plan.freeze(plan.select(runs))[method]
        print(f"{method}: {choice.point.name} (validation kNN {choice.score:.3f}; "
              f"{', '.join(f'{n} {v:.3f}' for n, v in choice.candidates.items())})", flush=True)
    _floors(base, [plan.GRID_SEED], plan.FLOORS, kept)


def budget(root: Path, kept: Path | None = None) -> None:
    choices = _choices(plan.METHODS)
    short = study.regime_name(plan.VALIDATION, plan.GRID_STEPS)
    base = study.prepare(root, CORPUS, study.regime_name(plan.VALIDATION, plan.BUDGET_LONG), RANDOM)
    for method, choice in choices.items():
        _train(base, method, choice.point, plan.GRID_SEED, kept)
    long_runs = study.evaluate(base, CORPUS)["runs"]
    short_runs = study.evaluate(root / CORPUS / short, CORPUS)["runs"]
    key = f"-s{plan.GRID_SEED}"
    gains = {m: long_runs[c.run + key]["metrics"][plan.PRIMARY] - short_runs[c.run + key]["metrics"][plan.PRIMARY]
             for m, c in choices.items()}
    last_quarter = {m: gain for m, c in choices.items()
                    if (gain := _last_quarter_gain(base / "runs" / (c.run + key))) is not None}
    steps = plan.freeze_budget(gains, last_quarter)
    for method, gain in gains.items():
        print(f"{method}: validation kNN {gain:+.3f} from {plan.GRID_STEPS} to {plan.BUDGET_LONG} steps, "
              + (f"{last_quarter[method]:+.3f} in the last quarter" if method in last_quarter else "no curve"),
              flush=True)
    print(f"budget: {steps} steps (the rule: {plan.BUDGET_LONG} if any method gains {plan.BUDGET_GAIN} or more)",
          flush=True)


def matrix(root: Path, seeds: list[int], preset: str, kept: Path | None = None) -> None:
    choices = _choices(plan.METHODS)
    steps = _budget() if preset == "cpu" else study.GPU_STEPS
    floors = plan.FLOORS if preset == "cpu" else [plan.FLOOR]
    for vendor in (*plan.TEST, plan.VALIDATION):
        base = study.prepare(root, CORPUS, study.regime_name(vendor, steps, "gpu" if preset == "gpu" else ""), RANDOM)
        for seed in seeds:
            for method, choice in choices.items():
                if preset == "cpu" or plan.METHODS[method].trainer == plan.XCLR_TRAIN:
                    _train(base, method, choice.point, seed, kept)
        _floors(base, seeds, floors, kept)


def ablation(root: Path, seeds: list[int], variant: str, kept: Path | None = None) -> None:
    """`variant` "tags" or "low": its methods (ABLATED) at their choices on the test rotations' variant data."""
    choices, steps = _choices(ABLATED[variant]), _budget()
    for vendor in plan.TEST:
        base = study.prepare(root, CORPUS, study.regime_name(vendor, steps, variant), RANDOM)
        for seed in seeds:
            for method in ABLATED[variant]:
                _train(base, method, choices[method].point, seed, kept)
        _floors(base, seeds, ABLATION_FLOORS[variant], kept)


def demo(root: Path, seeds: list[int], kept: Path | None = None) -> None:
    choices = _choices(emoji_demo.COMPARED)
    regime = study.regime_name(emoji_demo.DEMO_HELDOUT, plan.GRID_STEPS)
    base = study.prepare(root, CORPUS, regime, RANDOM)
    emoji_demo.show_neighbours(base / "shards-random")
    for seed in seeds:
        for method in emoji_demo.COMPARED:
            _train(base, method, choices[method].point, seed, kept)
    runs = study.evaluate(base, CORPUS)["runs"]
    table = json.loads(RESULTS.read_text()).get(CORPUS, {}) if RESULTS.exists() else {}
    emoji_demo.report(runs, seeds[0], table, choices, regime)
    print(f"\nEverything is under {base}: tars/ (counts.json), embed/, shards-random/, runs/ (metrics.jsonl, "
          "checkpoints/), eval/RUN/ (results.md, results.json, plots/nearest.png: held-out queries and their "
          "nearest training images)")


def report(root: Path, kept: Path | None = None, out: Path = RESULTS) -> None:
    if not (root / CORPUS).is_dir():
        raise PlanError(f"no run of the plan under {root / CORPUS}")
    results = {base.name: study.evaluate(base, CORPUS) for base in sorted((root / CORPUS).iterdir())
               if base.name in study.PLANNED and any((base / "runs").glob(f"*/{plan.RUN_DONE}"))}
    if not results:
        raise PlanError(f"no finished run of the plan under {root / CORPUS}")
    if kept is not None:
        for regime in results:
            keep(root / CORPUS / regime, kept)
    table = study.tabulate(root, {CORPUS: results})
    if out.exists():  # the runs of OUT that ROOT lacks stay (e.g. those made before runs were kept)
        table = study.merge(json.loads(out.read_text()), table)
    runs = sorted({m for regime in table[CORPUS].values() for m in regime})
    study.write_report(table, runs, out)
    study_plots.grid_scatter(table[CORPUS].get(study.regime_name(plan.VALIDATION, plan.GRID_STEPS), {}),
                             out.parent / f"{out.stem}-plots" / "grid.png")
    study_plots.curves(root / CORPUS, out.parent / f"{out.stem}-plots")


def keep(base: Path, kept: Path = KEPT) -> None:
    """Every evaluated run of regime `base` not yet whole in KEPT/REGIME/, its records copied there: METRICS, its
    EVALUATION less the class similarity matrices (the data of its heatmaps, which no table reads; 99 x 99 twice)
    and, last, RUN_DONE; each atomic, so that a copy cut short is not a kept run and is made again."""
    remove_temporaries(kept / base.name)  # this regime's only: another stage may be keeping another regime
    for done in sorted((base / "runs").glob(f"*/{plan.RUN_DONE}")):
        run, evaluation = done.parent, base / "eval" / done.parent.name / plan.EVALUATION
        target = kept / base.name / run.name
        if evaluation.exists() and not _whole(target, metrics=(run / METRICS).exists()):
            _copy([(run / METRICS, target / METRICS)])
            results = json.loads(evaluation.read_text())
            write_json_atomic(target / plan.EVALUATION, {**results, "runs": {
                name: {k: v for k, v in entry.items() if k != "class_similarity"}
                for name, entry in results["runs"].items()}})
            _copy([(done, target / plan.RUN_DONE)])


def restore(root: Path, kept: Path = KEPT) -> None:
    """The kept runs (`keep`) that ROOT lacks, their records copied under ROOT/CORPUS/REGIME/ (RUN_DONE last), so that
    a stage reuses them as finished and evaluated; their checkpoints stay on the machine that trained them."""
    for done in sorted(kept.glob(f"*/*/{plan.RUN_DONE}")):
        record, regime = done.parent, root / CORPUS / done.parent.parent.name
        run = regime / "runs" / record.name
        if _whole(record) and not (run / plan.RUN_DONE).exists():
            _copy([(record / METRICS, run / METRICS),
                   (record / plan.EVALUATION, regime / "eval" / record.name / plan.EVALUATION),
                   (done, run / plan.RUN_DONE)])


def _whole(record: Path, metrics: bool = False) -> bool:
    """A kept record is whole when its RUN_DONE and its EVALUATION are there, and its METRICS where `metrics` (the
    run has them; open_clip's runs do not): a copy cut short, or a record committed in part, is neither restored nor
    left as it is."""
    return all((record / name).exists() for name in (plan.RUN_DONE, plan.EVALUATION, *([METRICS] if metrics else [])))


def _copy(pairs: list[tuple[Path, Path]]) -> None:
    """Each source that exists (open_clip's runs have no METRICS) to its target, in order, atomically."""
    for source, target in pairs:
        if source.exists():
            write_atomic(target, lambda tmp, source=source: shutil.copyfile(source, tmp))


def _train(base: Path, method: str, point: plan.Point, seed: int, kept: Path | None) -> None:
    """One run of `method` at `point` on a regime's random-order shards, by the method's trainer (cached), then
    evaluated and kept (`keep`)."""
    spec, name, regime = plan.METHODS[method], plan.run_name(method, point), study.CORPORA[CORPUS][base.name]
    if spec.trainer == plan.OPEN_CLIP:
        openclip_clip.train_openclip(base / "shards-random", base / "runs" / f"{name}-s{seed}", regime.steps,
                                     point.lr, seed, regime.batch)
    else:
        study.train(base, CORPUS, name, "random", [*spec.args, *point.args], seed)
    study.evaluate(base, CORPUS)
    if kept is not None:
        keep(base, kept)


def _floors(base: Path, seeds: list[int], floors: Iterable[str], kept: Path | None) -> None:
    """The untrained backbones (lr 0) named in `floors` (plan.FLOORS: the convnet, open_clip's image tower)."""
    for name in floors:
        for seed in seeds:
            study.train(base, CORPUS, name, "random", [*study.METHODS[plan.FLOOR][1], *plan.FLOORS[name]], seed,
                        FLOOR_STEPS)
    study.evaluate(base, CORPUS)
    if kept is not None:
        keep(base, kept)


def _last_quarter_gain(run: Path) -> float | None:
    """The in-run kNN at the last evaluation minus at three quarters of the steps (None for a run without them)."""
    curve = [r for r in map(json.loads, (run / METRICS).read_text().splitlines()) if "eval/knn_accuracy" in r] \
        if (run / METRICS).exists() else []
    return curve[-1]["eval/knn_accuracy"] - curve[-2]["eval/knn_accuracy"] if len(curve) >= 2 else None


def _choices(methods: Iterable[str]) -> dict[str, plan.Choice]:
    choices = plan.load_choices()
    missing = [m for m in methods if m not in choices]
    if missing:
        raise PlanError(f"no frozen choice for {', '.join(missing)} in {plan.CHOICES}: run --plan grid first")
    return {m: choices[m] for m in methods}


def _budget() -> int:
    steps = plan.load_budget()
    if steps is None:
        raise PlanError(f"no frozen budget in {plan.BUDGET}: run --plan budget first")
    return steps
