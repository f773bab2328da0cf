"""The emoji study's selection rule (benchmarks/study_plan.py) and the main job's verdict (benchmarks/emoji_demo.py):
choices are made on validation runs only, once, and a verdict needs the study's seeds to be beyond their noise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import emoji_demo  # noqa: E402
import study  # noqa: E402
import study_plan as plan  # noqa: E402


def validation_runs(scores: dict[str, list[float]], fifth: dict[str, float] | None = None) -> dict[str, dict]:
    """xclr-eval's "runs" of the validation grid, seed GRID_SEED: each method's points scored in grid order, and the
    fifth point's score of the methods in `fifth`."""
    runs = {f"{plan.run_name(m, p)}-s{plan.GRID_SEED}": {"metrics": {plan.PRIMARY: v}}
            for m, values in scores.items() for p, v in zip(plan.METHODS[m].grid, values)}
    for method, value in (fifth or {}).items():
        point = plan.beyond_edge(method, {p.name: v for p, v in zip(plan.METHODS[method].grid, scores[method])})
        runs[f"{plan.run_name(method, point)}-s{plan.GRID_SEED}"] = {"metrics": {plan.PRIMARY: value}}
    return runs


def test_every_method_gets_the_same_number_of_grid_points_and_distinct_run_names():
    sizes = {m: len(spec.grid) for m, spec in plan.METHODS.items()}
    assert set(sizes.values()) == {4}
    names = [plan.run_name(m, p) for m, spec in plan.METHODS.items() for p in spec.grid]
    assert len(set(names)) == len(names)
    assert all(name.rsplit("-s", 1)[0] == name for name in names)  # study.tabulate splits the seed off at "-s"
    xclr = plan.METHODS["xclr"].grid
    assert {p.knob for p in xclr} == set(plan.TARGETS) and {p.lr for p in xclr} == set(plan.LRS)


def test_a_best_point_at_the_edge_of_the_learning_rates_gets_a_fifth_point_beyond_it():
    grid = plan.METHODS["xclr"].grid  # lr 5e-4, 5e-4, 1e-3, 1e-3 (default and graded targets each)
    top = plan.beyond_edge("xclr", {p.name: v for p, v in zip(grid, [0.40, 0.41, 0.42, 0.45])})
    assert top == plan.Point(2e-3, grid[3].knob)
    bottom = plan.beyond_edge("simclr", {p.name: v for p, v in zip(plan.METHODS["simclr"].grid, [0.5, 0.4, 0.3, 0.2])})
    assert bottom == plan.Point(2.5e-4, plan.METHODS["simclr"].grid[0].knob)
    siglip = plan.METHODS["siglip"].grid  # four learning rates: a best one inside needs no fifth
    assert plan.beyond_edge("siglip", {p.name: v for p, v in zip(siglip, [0.1, 0.3, 0.2, 0.1])}) is None


def test_each_method_takes_its_best_validation_point_and_a_tie_the_earlier_one():
    scores = {"xclr": [0.40, 0.45, 0.42, 0.45], "simclr": [0.41, 0.39, 0.38, 0.37]}
    assert plan.to_train("xclr", validation_runs(scores)) == [plan.Point(2.5e-4, plan.TARGETS[1])]
    assert plan.select(validation_runs(scores)) == {}  # both wait for their fifth point
    choices = plan.select(validation_runs(scores, {"xclr": 0.44, "simclr": 0.42}))
    assert set(choices) == {"xclr", "simclr"}  # the other methods have no evaluated point yet
    assert choices["xclr"].point == plan.METHODS["xclr"].grid[1] and choices["xclr"].score == 0.45
    assert choices["simclr"].point == plan.Point(2.5e-4, plan.TEMPERATURES[0]) and choices["simclr"].score == 0.42
    assert list(choices["xclr"].candidates.values()) == [0.40, 0.45, 0.42, 0.45, 0.44]
    assert plan.to_train("supcon", {}) == list(plan.METHODS["supcon"].grid)


def test_a_frozen_choice_is_never_rewritten_by_later_runs(tmp_path):
    path = tmp_path / "choices.json"
    plan.freeze(plan.select(validation_runs({"xclr": [0.40, 0.45, 0.42, 0.41]}, {"xclr": 0.3})), path)
    later = plan.select(validation_runs({"xclr": [0.40, 0.45, 0.50, 0.41], "simclr": [0.3, 0.2, 0.1, 0.0]},
                                        {"xclr": 0.3, "simclr": 0.1}))
    frozen = plan.freeze(later, path)
    assert frozen["xclr"].point == plan.METHODS["xclr"].grid[1]  # the first freeze stands
    assert frozen["simclr"].point == plan.METHODS["simclr"].grid[0]  # a new method is added
    assert plan.load_choices(path) == frozen
    assert json.loads(path.read_text())["xclr"]["run"] == plan.run_name("xclr", plan.METHODS["xclr"].grid[1])


@pytest.mark.parametrize("gains, steps", [({"xclr": 0.012, "simclr": -0.01}, plan.BUDGET_LONG),
                                          ({"xclr": 0.009, "simclr": 0.0}, plan.GRID_STEPS)])
def test_the_budget_is_the_longer_one_only_when_some_method_still_gains_a_point(tmp_path, gains, steps):
    path = tmp_path / "budget.json"
    assert plan.freeze_budget(gains, {"xclr": 0.002}, path) == steps
    assert plan.freeze_budget({"xclr": 0.5}, {}, path) == steps == plan.load_budget(path)  # frozen
    assert json.loads(path.read_text())["last_quarter_gains"] == {"xclr": 0.002}


def test_every_planned_regime_is_a_study_regime_with_its_rotation_curve_and_judge():
    regimes = study.CORPORA["emoji"]
    for vendor in (plan.VALIDATION, *plan.TEST):
        spec = regimes[study.regime_name(vendor, plan.GRID_STEPS)]
        assert vendor not in spec.train and f"{{tars}}/{vendor}" in spec.evaluate
        assert spec.curve[-1] == str(plan.GRID_STEPS // 4)
        assert "name+tags" in regimes[study.regime_name(vendor, plan.GRID_STEPS, "tags")].write
        low = regimes[study.regime_name(vendor, plan.GRID_STEPS, "low")]  # a third of the emoji, judged on all
        assert low.write[low.write.index("--every") + 1] == "3" and spec.write[spec.write.index("--every") + 1] == "1"
        assert low.judged_by == study.regime_name(vendor, plan.GRID_STEPS) and not spec.judged_by
        gpu = regimes[study.regime_name(vendor, study.GPU_STEPS, "gpu")]
        assert gpu.batch == study.GPU_BATCH and "resnet18" in gpu.backbone
    assert study.PLANNED <= set(regimes)


def test_a_low_data_regime_is_judged_by_its_full_regimes_folders(tmp_path):
    """study.judged_by: the low-data regime's evaluation reads the full regime's tars (written there once), a core
    regime reads its own; nothing is written when the judge's tars are done."""
    full = tmp_path / "emoji" / study.regime_name(plan.VALIDATION, plan.GRID_STEPS)
    (full / "tars").mkdir(parents=True)
    (full / "tars" / "done").touch()
    low = tmp_path / "emoji" / study.regime_name(plan.VALIDATION, plan.GRID_STEPS, "low")
    assert study.judged_by(low, "emoji") == full and study.judged_by(full, "emoji") == full
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["done", "emoji", full.name, "tars"]


def test_the_verdict_names_a_method_only_beyond_welchs_95_percent_quantile():
    ahead = emoji_demo.verdict([0.51, 0.50, 0.52], [0.47, 0.48, 0.46])
    assert ahead.says == "X-CLR ahead" and ahead.diff == pytest.approx(0.04)
    assert ahead.t == pytest.approx(0.04 / (2 * 0.01 ** 2 / 3) ** 0.5)
    assert ahead.critical == pytest.approx(2.776, abs=1e-3)  # equal spreads, 3 seeds each: 4 degrees of freedom
    assert emoji_demo.verdict([0.26, 0.24, 0.28], [0.30, 0.22, 0.26]).says == "level (within seed noise)"
    assert emoji_demo.verdict([0.40, 0.41, 0.40], [0.45, 0.46, 0.45]).says == "SimCLR ahead"
    near = emoji_demo.verdict([0.51, 0.50, 0.52], [0.4896, 0.4796, 0.4996])  # 2.5 standard errors apart
    assert near.t == pytest.approx(2.5, abs=0.01) and near.says == "level (within seed noise)"  # 2 se would not be


def test_kept_runs_are_restored_on_another_machine_as_finished_and_evaluated(tmp_path):
    """emoji_stages.keep / restore: a root's evaluated runs kept (records only) come back in a fresh root, where
    study.train reuses them, study.evaluate reads them without any checkpoint and the report merges them into the
    tables beside the runs those had; a kept copy cut short before its RUN_DONE or without its evaluation, and a run
    not yet evaluated, are not restored."""
    import emoji_stages

    regime = study.regime_name(plan.TEST[0], plan.BUDGET_LONG)
    base, kept = tmp_path / "a" / "emoji" / regime, tmp_path / "kept"
    runs = {"xclr@lr0.002-s0": 0.55, "simclr@lr0.002-s0": 0.49, "supcon@lr0.002-s0": 0.5}
    for name, knn in runs.items():
        (base / "runs" / name).mkdir(parents=True)
        (base / "runs" / name / "metrics.jsonl").write_text(json.dumps({"step": 10, "graph_hits": 3.0}) + "\n")
        (base / "runs" / name / plan.RUN_DONE).write_text('{"wall_s": 1}\n')
        (base / "eval" / name).mkdir(parents=True)
        (base / "eval" / name / plan.EVALUATION).write_text(
            json.dumps({"runs": {name: {"metrics": {plan.PRIMARY: knn, "caption_alignment": 0.2},
                                        "class_similarity": {"learned": [[1.0]], "target": [[1.0]]}}}}))
    (base / "runs" / "clip@lr0.002-s0").mkdir()  # trained, not evaluated: not kept
    (base / "runs" / "clip@lr0.002-s0" / plan.RUN_DONE).write_text('{"wall_s": 1}\n')
    emoji_stages.keep(base, kept)
    assert sorted(p.name for p in (kept / regime).iterdir()) == sorted(runs)
    assert sorted(p.name for p in (kept / regime / "xclr@lr0.002-s0").iterdir()) == sorted(
        ["metrics.jsonl", plan.EVALUATION, plan.RUN_DONE])
    (kept / regime / "simclr@lr0.002-s0" / plan.RUN_DONE).unlink()  # as if killed mid-copy
    (kept / regime / "supcon@lr0.002-s0" / plan.EVALUATION).unlink()  # as if committed in part

    fresh = tmp_path / "b"
    emoji_stages.restore(fresh, kept)
    restored = fresh / "emoji" / regime
    assert study.train(restored, "emoji", "xclr@lr0.002", "random", [], 0) == restored / "runs" / "xclr@lr0.002-s0"
    assert sorted(p.name for p in (restored / "runs").iterdir()) == ["xclr@lr0.002-s0"]
    assert study.evaluate(restored, "emoji")["runs"] == {
        "xclr@lr0.002-s0": {"metrics": {plan.PRIMARY: 0.55, "caption_alignment": 0.2}}}
    table = study.tabulate(fresh, {"emoji": {regime: study.evaluate(restored, "emoji")}})
    assert table["emoji"][regime]["xclr@lr0.002"] == {plan.PRIMARY: [0.55], "caption_alignment": [0.2],
                                                      "graph_hits": [3.0], "seed": [0]}

    emoji_stages.keep(base, kept)  # the copies cut short are made again
    emoji_stages.restore(fresh, kept)
    assert sorted(study.evaluate(restored, "emoji")["runs"]) == sorted(runs)
    out = tmp_path / "results.json"
    grid = study.regime_name(plan.VALIDATION, plan.GRID_STEPS)
    out.write_text(json.dumps({"emoji": {grid: {"xclr@lr0.002": {plan.PRIMARY: [0.5], "caption_alignment": [0.1],
                                                                 "seed": [0]}},
                                         regime: {"xclr@lr0.002": {plan.PRIMARY: [0.4, 0.6], "seed": [0, 1]}}}}))
    emoji_stages.report(fresh, out=out)
    merged = json.loads(out.read_text())["emoji"]
    assert merged[grid] == {"xclr@lr0.002": {plan.PRIMARY: [0.5], "caption_alignment": [0.1], "seed": [0]}}  # stays
    assert (tmp_path / "results-plots" / "grid.png").is_file()  # the grid drawn from the merged tables
    assert merged[regime]["xclr@lr0.002"][plan.PRIMARY] == [0.6, 0.55]  # seed 0 the root's, seed 1 kept
    assert merged[regime]["xclr@lr0.002"]["seed"] == [1, 0]
    assert merged[regime]["simclr@lr0.002"][plan.PRIMARY] == [0.49]


def test_the_main_job_prints_the_verdict_of_its_own_setting_and_of_the_matrix_at_the_frozen_budget(capsys):
    """emoji_demo.report: the demo's rotation at GRID_STEPS (the demo stage's seeds) and each test rotation at the
    frozen budget (the matrix's); a setting with fewer than MIN_SEEDS seeds gets no verdict."""
    choices = plan.load_choices()
    budget = plan.load_budget()
    assert budget is not None and budget != plan.GRID_STEPS  # frozen at BUDGET_LONG: the settings differ
    metrics = {key: 0.5 for key in emoji_demo.SHOWN}
    runs = {f"{choices[m].run}-s0": {"metrics": metrics} for m in emoji_demo.COMPARED}
    knn = {"xclr": [0.53, 0.54, 0.535], "simclr": [0.49, 0.50, 0.495]}
    table = {study.regime_name(emoji_demo.DEMO_HELDOUT, plan.GRID_STEPS):
             {choices[m].run: {plan.PRIMARY: knn[m]} for m in emoji_demo.COMPARED},
             study.regime_name(plan.TEST[0], budget):
             {choices[m].run: {plan.PRIMARY: knn[m][:2]} for m in emoji_demo.COMPARED}}
    emoji_demo.report(runs, 0, table, choices, study.regime_name(emoji_demo.DEMO_HELDOUT, plan.GRID_STEPS))
    lines = capsys.readouterr().out.splitlines()
    verdicts = lines[lines.index(next(x for x in lines if x.startswith("The study's verdict"))) + 1:]
    assert [line.split(":")[0].strip() for line in verdicts] == [
        f"{emoji_demo.DEMO_HELDOUT} held out, {plan.GRID_STEPS} steps",
        *(f"{v} held out, {budget} steps" for v in plan.TEST)]
    assert "X-CLR ahead (X-CLR - SimCLR +0.040" in verdicts[0]
    assert "has 2 seeds of it, fewer than 3: no verdict" in verdicts[1]
    assert "has 0 seeds of it" in verdicts[2]
