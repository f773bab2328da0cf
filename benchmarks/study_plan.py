"""The emoji study's plan, fixed before any of its runs: which rotation chooses, what is tuned, how a choice is made.

Rotations. Each trains on two vendors and queries with the third (`study.emoji`). Google held out is the VALIDATION
rotation: every choice is made on it. OpenMoji held out and Twitter held out are the TEST rotations: they are trained
and evaluated only at the frozen choices, and nothing is chosen on them.

The grid. Every method gets the same number of points (4), trained on the validation rotation, seed GRID_SEED, at
GRID_STEPS steps, on the same random-order shards, with the same backbone, augmentations, batch and optimizer:
  * learning rate in LRS x the method's temperature in TEMPERATURES (simclr, supcon, clip: --tau);
  * X-CLR and X-CLR+CLIP: learning rate in LRS x the target sharpness in TARGETS: the default targets (tau_s 0.1,
    floor at the background similarity, which leave most of an anchor's target mass on its own caption) and graded
    ones (tau_s 0.3, no floor, which move about half of it onto the anchor's graph neighbours);
  * SigLIP and open_clip's CLIP learn their own temperature (and SigLIP its bias), so their four points are four
    learning rates (LEARNED_TEMPERATURE_LRS). open_clip's CLIP is trained by open_clip's own trainer
    (benchmarks/openclip_clip.py: an image and a text tower trained together, open_clip's augmentation).
The rule (`select`): each method's point is the one with the highest subcategory kNN accuracy of `xclr-eval` on the
validation rotation (the primary metric, named before any run); a tie goes to the earlier point in the grid's
order. When that point has the grid's highest or lowest learning rate, the method gets one more point
(`beyond_edge`): its best point's knob at twice or half that learning rate, and the choice is the best of the five
(amended after X-CLR's first four points, before any other method's, so that no optimum is left at an edge). The
choices are written once to CHOICES and never rewritten by a later run.

The budget (`budget`): each method's chosen point is trained again at BUDGET_LONG steps on the validation rotation.
The reported budget is BUDGET_LONG when any method's validation kNN gains at least BUDGET_GAIN from GRID_STEPS to
BUDGET_LONG, else GRID_STEPS; it is written once to BUDGET, with each method's gain over the last quarter of its
BUDGET_LONG run (its in-run curve), which says whether BUDGET_LONG itself has flattened (a gain under BUDGET_GAIN).
The in-run evaluation (every quarter of the steps) draws each xclr-train run's curve; open_clip's runs have none.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

VALIDATION = "google"
TEST = ("openmoji", "twitter")
GRID_SEED = 0
GRID_STEPS = 600
BUDGET_LONG = 1200
BUDGET_GAIN = 0.01  # one point of subcategory kNN: about the smallest seed spread the old study measured
PRIMARY = "knn_accuracy"
LRS = (5e-4, 1e-3)
LEARNED_TEMPERATURE_LRS = (2.5e-4, 5e-4, 1e-3, 2e-3)
TEMPERATURES = (("--tau", "0.1"), ("--tau", "0.2"))
TARGETS = (("--tau-s", "0.1"), ("--tau-s", "0.3", "--floor", "none"))
CHOICES = Path(__file__).resolve().parent / "results" / "emoji-choices.json"
BUDGET = CHOICES.with_name("emoji-budget.json")
# A study run's records, whichever trainer made it: ROOT/CORPUS/REGIME/runs/RUN/RUN_DONE (written last, with the run's
# wall time) and ROOT/CORPUS/REGIME/eval/RUN/EVALUATION (its xclr-eval results; eval/EVALUATION: all runs merged).
RUN_DONE = "done.json"
EVALUATION = "results.json"


@dataclass(frozen=True)
class Point:
    """One grid point: a learning rate and the options the method's own knob takes there."""

    lr: float
    knob: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """E.g. "lr0.0005-tau0.2", "lr0.001-tau_s0.3-floornone"; the run's name is METHOD@NAME-sSEED."""
        knob = "-".join(f"{flag.lstrip('-').replace('-', '_')}{value}" for flag, value in zip(self.knob[::2],
                                                                                               self.knob[1::2]))
        return f"lr{self.lr:g}" + (f"-{knob}" if knob else "")

    @property
    def args(self) -> list[str]:
        return ["--lr", f"{self.lr:g}", *self.knob]


XCLR_TRAIN, OPEN_CLIP = "xclr-train", "open_clip"  # the trainers


@dataclass(frozen=True)
class Method:
    """An objective of the comparison: its trainer, its xclr-train options (none for open_clip) and its grid."""

    args: tuple[str, ...]
    grid: tuple[Point, ...]
    trainer: str = XCLR_TRAIN


def _grid(lrs: tuple[float, ...], knobs: tuple[tuple[str, ...], ...] = ((),)) -> tuple[Point, ...]:
    return tuple(Point(lr, knob) for lr, knob in itertools.product(lrs, knobs))


METHODS = {
    "xclr": Method(("--loss", "xclr"), _grid(LRS, TARGETS)),
    "simclr": Method(("--loss", "simclr"), _grid(LRS, TEMPERATURES)),
    "supcon": Method(("--loss", "supcon"), _grid(LRS, TEMPERATURES)),
    "clip": Method(("--loss", "clip"), _grid(LRS, TEMPERATURES)),
    "xclr-clip": Method(("--loss", "xclr-clip"), _grid(LRS, TARGETS)),
    "siglip": Method(("--loss", "siglip"), _grid(LEARNED_TEMPERATURE_LRS)),
    "openclip": Method((), _grid(LEARNED_TEMPERATURE_LRS), OPEN_CLIP),
}
FLOOR = "random-init"  # the untrained backbone (lr 0), trained nowhere, evaluated everywhere
OPENCLIP_FLOOR = f"{FLOOR}-test_resnet"  # open_clip's image tower untrained
FLOORS = {FLOOR: (), OPENCLIP_FLOOR: ("--arch", "test_resnet")}  # each floor's run name: its backbone options


def run_name(method: str, point: Point) -> str:
    return f"{method}@{point.name}"


@dataclass(frozen=True)
class Choice:
    """A frozen choice: the point, the validation score that chose it, and every candidate's score."""

    method: str
    point: Point
    score: float
    candidates: dict[str, float]

    @property
    def run(self) -> str:
        return run_name(self.method, self.point)


def beyond_edge(method: str, scores: dict[str, float]) -> Point | None:
    """The fifth point of a method whose best grid point (by `scores`, {point name: score}) has the grid's highest
    or lowest learning rate: that point's knob at twice or half its learning rate; None when it lies inside."""
    grid = METHODS[method].grid
    best = max(grid, key=lambda p: scores[p.name])  # max keeps the first of equals
    lrs = sorted({p.lr for p in grid})
    if best.lr == lrs[-1]:
        return Point(best.lr * 2, best.knob)
    return Point(best.lr / 2, best.knob) if best.lr == lrs[0] else None


def to_train(method: str, validation: dict[str, dict]) -> list[Point]:
    """The points of `method` that the validation runs ({run name: its entry in results.json's "runs"}) still lack:
    its grid's, then its fifth point where `beyond_edge` asks for one; [] when its choice can be made."""
    missing = [p for p in METHODS[method].grid if _score(method, p, validation) is None]
    if missing:
        return missing
    extra = beyond_edge(method, {p.name: _score(method, p, validation) for p in METHODS[method].grid})
    return [extra] if extra is not None and _score(method, extra, validation) is None else []


def select(validation: dict[str, dict]) -> dict[str, Choice]:
    """Each method's best point by PRIMARY over its grid and its fifth point (the module docstring), from the
    validation rotation's `xclr-eval` runs, seed GRID_SEED. A method with a point not yet evaluated is left out."""
    choices = {}
    for method, spec in METHODS.items():
        if to_train(method, validation):
            continue
        points = [*spec.grid]
        extra = beyond_edge(method, {p.name: _score(method, p, validation) for p in spec.grid})
        points += [extra] if extra is not None else []
        scores = {p.name: _score(method, p, validation) for p in points}
        best = max(points, key=lambda p: scores[p.name])
        choices[method] = Choice(method, best, scores[best.name], scores)
    return choices


def _score(method: str, point: Point, validation: dict[str, dict]) -> float | None:
    entry = validation.get(f"{run_name(method, point)}-s{GRID_SEED}")
    return None if entry is None else entry["metrics"][PRIMARY]


def freeze(choices: dict[str, Choice], path: Path = CHOICES) -> dict[str, Choice]:
    """Write the choices not yet in `path` and return every frozen choice; a choice already there is never changed."""
    frozen = load_choices(path)
    for method, choice in choices.items():
        frozen.setdefault(method, choice)
    path.write_text(json.dumps({m: {"lr": c.point.lr, "knob": list(c.point.knob), "point": c.point.name,
                                    "run": c.run, "score": c.score, "candidates": c.candidates}
                                for m, c in frozen.items()}, indent=2) + "\n")
    return frozen


def load_choices(path: Path = CHOICES) -> dict[str, Choice]:
    if not path.exists():
        return {}
    return {m: Choice(m, Point(c["lr"], tuple(c["knob"])), c["score"], c["candidates"])
            for m, c in json.loads(path.read_text()).items()}


def freeze_budget(gains: dict[str, float], last_quarter: dict[str, float], path: Path = BUDGET) -> int:
    """The rule's budget from each method's validation gain (BUDGET_LONG minus GRID_STEPS), written to `path` with
    the gains and the last-quarter gains of the BUDGET_LONG runs unless a budget is frozen there already; returns
    the frozen budget."""
    frozen = load_budget(path)
    if frozen is not None:
        return frozen
    steps = BUDGET_LONG if max(gains.values()) >= BUDGET_GAIN else GRID_STEPS
    path.write_text(json.dumps({"steps": steps, "gains": gains, "last_quarter_gains": last_quarter,
                                "rule_gain": BUDGET_GAIN}, indent=2) + "\n")
    return steps


def load_budget(path: Path = BUDGET) -> int | None:
    return json.loads(path.read_text())["steps"] if path.exists() else None
