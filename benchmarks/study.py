"""The quality study: X-CLR against SimCLR, SupCon, CLIP and the classic objectives under one budget.

Three corpora:
  * emoji (the main one): three vendors' drawings of the same ~1,900 emoji, captioned by the emoji's name. Train on
    two vendors, evaluate on the third, which training never saw: kNN and linear probe by subcategory (primary) and
    category with the training vendors' images as the database, caption R@1/R@5 (finding the same emoji) and caption
    alignment. The study's plan (`--plan STAGE`, benchmarks/study_plan.py and emoji_stages.py) runs its own regimes
    (`plan_regimes`: [tags-|low-|gpu-]heldout-VENDOR-STEPS); the earlier study's others remain: heldout-openmoji and
    heldout-twitter at 150 steps, heldout-openmoji-600-crop (the crop-and-flip recipe), -vit and -vit-p4 (a small
    ViT with patches of 8 and 4 px);
  * fashion-mnist: class-caption mode ("a photo of a {}"); train on the first N training images, evaluate on the
    IDX test split (10k images); regimes full and low (10%);
  * tuxpaint: caption mode (each stamp's own caption); evaluate on all stamps with their 16 categories as labels;
    regimes full and low (10%).
Every method trains the same backbone with the same augmentations (the regime's), batch, steps, optimizer and seeds:
  xclr-groups  X-CLR, sparse targets, neighbour-grouped shards (--group-size 8)
  xclr-random  X-CLR, sparse targets, shards in random order (--group-size 1)
  xclr-dense   X-CLR, dense targets from the caption embeddings (random order)
  simclr, supcon (labels = caption ids), clip (frozen caption embeddings; random order)
  xclr-clip    X-CLR (sparse) plus the CLIP term towards the frozen caption embeddings (random order)
  triplet, npair, contrastive  the metric-learning losses, positives = equal caption ids (random order)
  moco, byol, nnclr  the frameworks with a momentum network or a support queue (random order)
  xclr-groups-queue, xclr-random-queue  X-CLR with a queue of past projections (--queue-size)
  random-init  the untrained backbone (lr 0), the floor every method must clear
plus an ablation sweep of X-CLR's knobs (`--sweep`). Each step is skipped when its output is complete, so the
script can be stopped and rerun. Each run is evaluated once by `xclr-eval` (ROOT/CORPUS/REGIME/eval/RUN/); the
summary (of every regime evaluated under ROOT so far) is ROOT/results.json, ROOT/results.md and
ROOT/results-plots/compare-CORPUS-REGIME.png. `--add-to benchmarks/results/study.json` also merges them, seed by
seed, into the committed summary (study.md and study-plots/ beside it).

    .venv/bin/python benchmarks/study.py --root runs/study [--corpora emoji] [--regimes heldout-openmoji]
        [--seeds 0 1 2] [--sweep] [--methods ...] [--add-to benchmarks/results/study.json]
    .venv/bin/python benchmarks/study.py --root runs/emoji-study --plan STAGE [--keep] [--seeds 0 1 2] [--preset gpu]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import study_plan as plan

from xclr_schemas.atomic import write_json_atomic
from xclr_schemas.names import CHECKPOINTS, GRAPH, LATEST, MANIFEST, METRICS

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass(frozen=True)
class Regime:
    """One regime's data and evaluation. `write`: sample_corpora arguments; `train`: the folders under the written
    tars that training uses ("" = the tars folder); `embed`: embed arguments beyond those folders; `evaluate`:
    xclr-eval arguments, where {tars} is the written tars and {train} a folder of links to the training tars with the
    class names (`_database`), both of the regime `judged_by`; `steps`: the training budget, of `batch` samples;
    `augment`: the training views (xclr-train --augment); `backbone`: the xclr-train options that choose it, its
    image size and loader; `curve`: xclr-train's in-run evaluation options (the same placeholders), whose log draws
    the run's learning curve; `judged_by`: the regime whose {tars} and {train} the evaluation and the curve read
    ("" = this one; a low-data regime is judged on its full regime's database and held-out images, so that only the
    training data differs)."""

    write: list[str]
    embed: list[str]
    evaluate: list[str]
    steps: int
    train: tuple[str, ...] = ("",)
    augment: str = "simclr"
    backbone: tuple[str, ...] = ("--arch", "convnet", "--image-size", "32", "--workers", "1")
    curve: tuple[str, ...] = ()
    batch: int = 128
    judged_by: str = ""


# A ViT of the convnet's size for the backbone check: timm's test_vit (0.26M parameters, width 64), 4x4 patches of
# 8 px, trained with its family's recipe (weight decay 0.1, gradient clipping) at the convnet's peak learning rate.
SMALL_VIT = ("--arch", "test_vit", "--patch-size", "8", "--lr", "0.0005", "--image-size", "32", "--workers", "1")
SMALL_VIT_P4 = ("--arch", "test_vit", "--patch-size", "4", "--lr", "0.0005", "--image-size", "32",
                "--workers", "1")  # 64 patches of 4 px: about 4x the cost
# The GPU preset (`--preset gpu`): a real backbone at the emoji's own 64 px, batch 256, 2,000 steps.
GPU_BACKBONE = ("--arch", "resnet18", "--image-size", "64", "--workers", "8")
GPU_STEPS, GPU_BATCH = 2000, 256
CLASS_MODE = ["--label-col", "label", "--classnames", "{tars}/classnames.txt"]
EMOJI_EVAL = ["--label-field", "subcategory", "--label-field", "category", "--no-clustering"]


def emoji(heldout: str, every: int = 1, steps: int = 150, augment: str = "simclr",
          backbone: tuple[str, ...] = Regime.backbone, captions: str = "name", batch: int = Regime.batch,
          judged_by: str = Regime.judged_by) -> Regime:
    """Train on the two other vendors, query with `heldout`'s images; `captions` as sample_corpora emoji --captions."""
    train = tuple(v for v in ("google", "twitter", "openmoji") if v != heldout)
    curve = ("--eval-data", "{train}", "--eval-queries", "{tars}/" + heldout, "--eval-every", str(steps // 4))
    return Regime(["emoji", "--every", str(every), "--captions", captions], ["--label-col", "label"],
                  ["--data", "{train}", "--queries", "{tars}/" + heldout, *EMOJI_EVAL], steps, train, augment, backbone,
                  curve, batch, judged_by)


def plan_regimes() -> dict[str, Regime]:
    """The emoji study's regimes (study_plan): every rotation at both budgets, as written by `regime_name`."""
    regimes = {}
    for vendor in (plan.VALIDATION, *plan.TEST):
        for steps in (plan.GRID_STEPS, plan.BUDGET_LONG):
            regimes[regime_name(vendor, steps)] = emoji(vendor, steps=steps)
            regimes[regime_name(vendor, steps, "tags")] = emoji(vendor, steps=steps, captions="name+tags")
            regimes[regime_name(vendor, steps, "low")] = emoji(vendor, every=3, steps=steps,
                                                               judged_by=regime_name(vendor, steps))
        regimes[regime_name(vendor, GPU_STEPS, "gpu")] = emoji(vendor, steps=GPU_STEPS, backbone=GPU_BACKBONE,
                                                              batch=GPU_BATCH)
    return regimes


def regime_name(heldout: str, steps: int, variant: str = "") -> str:
    """E.g. heldout-google-600 (the core data), tags-heldout-openmoji-600 (captions with tags), low-... (a third of
    the emoji), gpu-heldout-twitter-2000 (the GPU preset)."""
    return (f"{variant}-" if variant else "") + f"heldout-{heldout}-{steps}"


PLANNED = set(plan_regimes())
CORPORA = {
    "emoji": {
        **plan_regimes(),
        "heldout-openmoji": emoji("openmoji"),
        "heldout-twitter": emoji("twitter"),
        "heldout-openmoji-600-crop": emoji("openmoji", steps=600, augment="crop"),  # the recipe check
        "heldout-openmoji-600-vit": emoji("openmoji", steps=600, backbone=SMALL_VIT),  # the backbone check
        "heldout-openmoji-600-vit-p4": emoji("openmoji", steps=600, backbone=SMALL_VIT_P4),  # finer patches
    },
    "fashion-mnist": {
        "full": Regime(["fashion-mnist", "--limit", "10000"], CLASS_MODE,
                       ["--data", "/usr/share/datasets/fashion-mnist"], 100),
        "low": Regime(["fashion-mnist", "--limit", "1000"], CLASS_MODE,
                      ["--data", "/usr/share/datasets/fashion-mnist"], 100),
    },
    "tuxpaint": {
        "full": Regime(["tuxpaint"], ["--label-col", "label"], ["--data", "{tars}"], 60),
        "low": Regime(["tuxpaint", "--every", "10"], ["--label-col", "label"], ["--data", "{tars}"], 60,
                      judged_by="full"),
    },
}
LAYOUTS = {"groups": ["--group-size", "8"], "random": ["--group-size", "1"]}
QUEUE = 1024  # entries: 8 batches, within the smallest training set (1000 images)
METHODS = {
    "xclr-groups": ("groups", ["--loss", "xclr"]),
    "xclr-random": ("random", ["--loss", "xclr"]),
    "xclr-dense": ("random", ["--loss", "xclr", "--targets", "dense"]),
    "simclr": ("random", ["--loss", "simclr"]),
    "supcon": ("random", ["--loss", "supcon"]),
    "clip": ("random", ["--loss", "clip"]),
    "xclr-clip": ("random", ["--loss", "xclr-clip"]),
    "triplet": ("random", ["--loss", "triplet"]),
    "npair": ("random", ["--loss", "npair"]),
    "contrastive": ("random", ["--loss", "contrastive"]),
    "moco": ("random", ["--loss", "moco", "--queue-size", str(QUEUE)]),
    "byol": ("random", ["--loss", "byol"]),
    "nnclr": ("random", ["--loss", "nnclr", "--queue-size", str(QUEUE)]),
    "xclr-groups-queue": ("groups", ["--loss", "xclr", "--queue-size", str(QUEUE)]),
    "xclr-random-queue": ("random", ["--loss", "xclr", "--queue-size", str(QUEUE)]),
    # the floor every method must clear: the random-init backbone (lr 0; the steps only settle its BN statistics)
    "random-init": ("random", ["--loss", "simclr", "--lr", "0"]),
    # an oracle: SupCon with the evaluation's own labels as positives (emoji: the subcategory)
    "supcon-label": ("random", ["--loss", "supcon", "--positives", "label"]),
}
# X-CLR's targets, changed from the defaults (tau = tau_s = 0.1, floor = background).
SWEEP = {
    "xclr-groups-tau_s0.3": ("groups", ["--loss", "xclr", "--tau-s", "0.3"]),
    "xclr-groups-tau_s1": ("groups", ["--loss", "xclr", "--tau-s", "1"]),
    "xclr-groups-tau_s0.02": ("groups", ["--loss", "xclr", "--tau-s", "0.02"]),
    "xclr-groups-calibrated": ("groups", ["--loss", "xclr", "--calibrate", "background"]),
    "xclr-random-tau_s0.3": ("random", ["--loss", "xclr", "--tau-s", "0.3"]),
    # no target weight outside the graph, so that a softer tau_s spreads mass over graph neighbours, not everyone
    "xclr-random-floor-none-tau_s0.3": ("random", ["--loss", "xclr", "--floor", "none", "--tau-s", "0.3"]),
}
# The table's columns, where a regime's evaluation has them.
REPORTED = ("knn_accuracy", "knn_accuracy@category", "linear_probe_accuracy", "mAP", "caption_R@1", "caption_R@5",
            "semantic_alignment", "caption_alignment")
TARGET_STATS = ("graph_hits", "graph_hits_queue", "target_same_caption", "target_entropy")  # metrics.jsonl keys
# One budget for every method (a 2-core CPU study: a small CNN, or the regime's backbone, at 32 px).
TRAIN = ["--proj-hidden", "512", "--proj-dim", "128", "--optimizer", "adamw", "--log-every", "10", "--no-progress"]


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, env=ENV)


def prepare(root: Path, corpus: str, regime: str, layouts: tuple[str, ...] = tuple(LAYOUTS)) -> Path:
    """Tars -> embed -> one shard set per layout (skipped once every layout's manifest exists); returns the
    regime's directory."""
    base = root / corpus / regime
    spec = CORPORA[corpus][regime]
    tars = base / "tars"
    if not (tars / "done").exists():
        sh(str(BIN / "python"), "-m", "xclr_prep.sample_corpora", spec.write[0], str(tars), *spec.write[1:])
        (tars / "done").touch()
    if all((base / f"shards-{layout}" / MANIFEST).exists() for layout in layouts):
        return base
    embed_args = [a.format(tars=tars) for a in spec.embed]
    sh(str(BIN / "xclr-prep"), "embed", *[str(tars / part) for part in spec.train], "--out", str(base / "embed"),
       *embed_args, "--no-progress")
    graph = []
    for layout in layouts:
        sh(str(BIN / "xclr-prep"), "graph", str(base / "embed"), "--out", str(base / f"shards-{layout}"),
           *LAYOUTS[layout], "--with-embeddings", "--shard-samples", "1000", "--no-progress", *graph)
        graph = ["--graph", str(base / f"shards-{layout}" / GRAPH)]
    return base


def train(base: Path, corpus: str, name: str, layout: str, args: list[str], seed: int,
          steps: int | None = None) -> Path:
    """Train run NAME-sSEED of a regime (its steps, or `steps`), unless it is done; returns its directory."""
    run = base / "runs" / f"{name}-s{seed}"
    if (run / plan.RUN_DONE).exists():
        return run
    spec = CORPORA[corpus][base.name]
    steps = steps or spec.steps
    curve: list[str] = []
    if spec.curve:  # the judge's tars and database are made only for a run that evaluates itself
        judge = judged_by(base, corpus)
        curve = [a.format(train=_database(judge, CORPORA[corpus][judge.name]), tars=judge / "tars")
                 for a in spec.curve]
    resume = ["--resume", "latest"] if (run / CHECKPOINTS / LATEST).exists() else []
    start = time.perf_counter()
    # the method's options after the backbone's, so that random-init's --lr 0 wins
    sh(str(BIN / "xclr-train"), "--data", str(base / f"shards-{layout}"), "--out", str(run), *spec.backbone, *args,
       *TRAIN,
       "--augment", spec.augment, "--batch-size", str(spec.batch), "--steps", str(steps),
       "--samples-per-epoch", str(steps * spec.batch),
       "--seed", str(seed), *curve, *resume)
    write_json_atomic(run / plan.RUN_DONE, {"wall_s": time.perf_counter() - start})
    return run


def evaluate(base: Path, corpus: str) -> dict:
    """Every finished run of a regime, each evaluated once by `xclr-eval` (ROOT/.../eval/RUN/), merged into
    ROOT/.../eval/results.json."""
    spec = CORPORA[corpus][base.name]
    merged: dict = {}
    for run in sorted(done.parent for done in (base / "runs").glob(f"*/{plan.RUN_DONE}")):
        out = base / "eval" / run.name
        if not (out / plan.EVALUATION).exists():  # the judge's tars and database are needed only here
            # a run restored from its records (emoji_stages.restore); PlanError lives above this module
            if not (run / CHECKPOINTS / LATEST).exists():
                sys.exit(f"Error: {run} has no {CHECKPOINTS}/{LATEST} to evaluate: restore {out / plan.EVALUATION} too")
            judge = judged_by(base, corpus)
            tars, train = judge / "tars", _database(judge, CORPORA[corpus][judge.name])
            sh(str(BIN / "xclr-eval"), str(run / CHECKPOINTS / LATEST),
               *[a.format(tars=tars, train=train) for a in spec.evaluate], "--out", str(out))
        results = json.loads((out / plan.EVALUATION).read_text())
        merged = {**results, "runs": {**merged.get("runs", {}), **results["runs"]}}
    write_json_atomic(base / "eval" / plan.EVALUATION, merged)
    return merged


def judged_by(base: Path, corpus: str) -> Path:
    """The directory of the regime that judges `base`'s runs (Regime.judged_by), its tars written if need be."""
    judge = CORPORA[corpus][base.name].judged_by
    return prepare(base.parent.parent, corpus, judge, layouts=()) if judge else base


def _database(base: Path, spec: Regime) -> str:
    """The evaluation's database: a folder of links to the training tars, with the corpus's classnames.txt (the
    in-run evaluation finds the class names of a folder). Made whole on every call, so an interrupted one is
    completed."""
    folder = base / "database"
    folder.mkdir(exist_ok=True)
    links = {f"{part or 'all'}-{tar.name}": tar
             for part in spec.train for tar in sorted((base / "tars" / part).glob("*.tar"))}
    links["classnames.txt"] = base / "tars" / spec.train[0] / "classnames.txt"
    for name, target in links.items():
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(target.resolve())
    return str(folder)


def tabulate(root: Path, results: dict[str, dict[str, dict]]) -> dict:
    """Per corpus, regime and method: every metric (and the X-CLR graph hits) as a list over the method's seeds,
    with the seeds themselves under "seed"."""
    table: dict = {}
    for corpus, regimes in results.items():
        for regime, evaluation in regimes.items():
            per_method: dict[str, dict[str, list[float]]] = table.setdefault(corpus, {}).setdefault(regime, {})
            for run_name, run in evaluation["runs"].items():
                method, seed = run_name.rsplit("-s", 1)
                values = {**run["metrics"], **_training_stats(root / corpus / regime / "runs" / run_name),
                          "seed": int(seed)}
                for key, value in values.items():
                    per_method.setdefault(method, {}).setdefault(key, []).append(value)
    return table


def merge(into: dict, new: dict) -> dict:
    """`into` with the runs of `new` added; a seed present in both takes `new`'s values (so a merge repeated is
    the same merge)."""
    merged = copy.deepcopy(into)
    for corpus, regimes in new.items():
        for regime, per_method in regimes.items():
            for method, values in per_method.items():
                old = merged.setdefault(corpus, {}).setdefault(regime, {}).get(method, {"seed": []})
                keep = [i for i, seed in enumerate(old["seed"]) if seed not in values["seed"]]
                merged[corpus][regime][method] = {
                    key: [old[key][i] for i in keep if key in old] + values[key] for key in values}
    return merged


def write_report(table: dict, methods: list[str], out: Path) -> None:
    """OUT (the table as JSON), OUT with .md (one Markdown table per corpus and regime, mean ± std over seeds) and
    OUT-plots/compare-CORPUS-REGIME.png."""
    from xclr_eval import plots
    from xclr_eval.report import column_name

    for corpus, regimes in table.items():
        for regime, per_method in regimes.items():
            shown = {m: per_method[m] for m in methods if m in per_method}
            plots.compare_runs(shown, f"{corpus}, {regime} data",
                               out.parent / f"{out.stem}-plots" / f"compare-{corpus}-{regime}.png")
    out.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    lines = []
    for corpus, regimes in table.items():
        for regime, per_method in regimes.items():
            keys = [k for k in REPORTED if any(k in metrics for metrics in per_method.values())]
            seeds = max(len(metrics["knn_accuracy"]) for metrics in per_method.values())
            lines += [f"### {corpus}, {regime}" + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""), "",
                      "| method | seeds | " + " | ".join(column_name(k) for k in keys) + " |",
                      "|---|---:|" + "---:|" * len(keys)]
            lines += [f"| {m} | {len(per_method[m]['knn_accuracy'])} | "
                      + " | ".join(_cell(per_method[m][k]) if k in per_method[m] else "-" for k in keys) + " |"
                      for m in methods if m in per_method]
            lines.append("")
        hits = [(r, m) for r in regimes for m in methods if "graph_hits" in regimes[r].get(m, {})]
        if hits:
            lines += [f"X-CLR graph hits per anchor on {corpus} (mean over the steps): in the batch, in the queue",
                      "", "| regime | method | batch | queue |", "|---|---|---:|---:|"]
            lines += [f"| {r} | {m} | {_cell(regimes[r][m]['graph_hits'])} | "
                      f"{_cell(regimes[r][m]['graph_hits_queue']) if 'graph_hits_queue' in regimes[r][m] else '-'} |"
                      for r, m in hits]
            lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def _training_stats(run: Path) -> dict[str, float]:
    """Means over the logged training steps of what X-CLR runs log of their targets: graph hits (in the batch, in
    the queue), the target mass on the anchor's own caption and the target entropy. Nothing for a run without them
    (open_clip's runs log nothing here); the in-run evaluation's lines are not training steps."""
    if not (run / METRICS).exists():
        return {}
    lines = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    stats = {}
    for key in TARGET_STATS:
        values = [x[key] for x in lines if key in x]
        if values:
            stats[key] = sum(values) / len(values)
    return stats


def _cell(values: list[float]) -> str:
    """One seed: the value; several: mean ± sample standard deviation."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def run_plan(opts: argparse.Namespace) -> None:
    """A stage of the emoji study's plan; a stage that cannot start, or an open_clip run that cannot, exits 2 with
    one line."""
    import emoji_stages as stages
    import openclip_clip

    kept = stages.KEPT if opts.keep else None
    stage = {"grid": lambda: stages.grid(opts.root, kept), "budget": lambda: stages.budget(opts.root, kept),
             "matrix": lambda: stages.matrix(opts.root, opts.seeds, opts.preset, kept),
             "captions": lambda: stages.ablation(opts.root, opts.seeds, "tags", kept),
             "low": lambda: stages.ablation(opts.root, opts.seeds, "low", kept),
             "demo": lambda: stages.demo(opts.root, opts.seeds, kept),
             "report": lambda: stages.report(opts.root, kept)}[opts.plan]
    try:
        if kept is not None:
            stages.restore(opts.root, kept)
        stage()
    except (stages.PlanError, openclip_clip.OpenClipError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/study"))
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA))
    parser.add_argument("--regimes", nargs="+", default=None,
                        help="Default: every regime of each corpus but the plan's (those run by --plan).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--sweep", action="store_true", help="Also run the X-CLR ablations (SWEEP).")
    parser.add_argument("--methods", nargs="+", default=None, help="Only these methods (of METHODS and SWEEP).")
    parser.add_argument("--add-to", type=Path, default=None,
                        help="Also merge this root's runs into a kept summary (benchmarks/results/study.json: its .md "
                             "and -plots/ are rewritten), so that a study spread over machines adds up.")
    parser.add_argument("--plan", choices=["grid", "budget", "matrix", "captions", "low", "demo", "report"],
                        default=None, help="Run a stage of the emoji study's plan instead (benchmarks/emoji_stages.py);"
                                           " --seeds for matrix, captions, low and demo.")
    parser.add_argument("--keep", action="store_true",
                        help="--plan: keep each evaluated run's records in the repository (emoji_stages.KEPT: the "
                             "project's own study) and first restore the kept runs ROOT lacks.")
    parser.add_argument("--preset", choices=["cpu", "gpu"], default="cpu",
                        help="--plan matrix: the CPU regimes (convnet at 32 px, the frozen budget) or the GPU ones "
                             "(ResNet-18 at 64 px, batch 256, 2,000 steps).")
    opts = parser.parse_args()
    if opts.plan:
        run_plan(opts)
        return
    methods = {**METHODS, **(SWEEP if opts.sweep else {})}
    if opts.methods:
        methods = {name: {**METHODS, **SWEEP}[name] for name in opts.methods}
    for corpus in opts.corpora:
        for regime in opts.regimes or [r for r in CORPORA[corpus] if r not in PLANNED]:
            if regime not in CORPORA[corpus]:
                continue
            base = prepare(opts.root, corpus, regime)
            for seed in opts.seeds:
                for name, (layout, args) in methods.items():
                    train(base, corpus, name, layout, args, seed)
            evaluate(base, corpus)
    results: dict[str, dict[str, dict]] = {}
    for done in sorted(opts.root.glob(f"*/*/eval/{plan.EVALUATION}")):
        results.setdefault(done.parts[-4], {})[done.parts[-3]] = json.loads(done.read_text())
    table = tabulate(opts.root, results)
    write_report(table, [*METHODS, *SWEEP], opts.root / "results.json")
    if opts.add_to:
        write_report(merge(json.loads(opts.add_to.read_text()), table), [*METHODS, *SWEEP], opts.add_to)


if __name__ == "__main__":
    main()
