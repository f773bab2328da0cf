"""One `xclr-eval` command: load the evaluation set (and the held-out queries), the checkpoints and the class captions'
embeddings (`load`), score every checkpoint with the registered metrics and draw its plots (`evaluate`), and write
OUT (`run`).

OUT holds results.json (everything), results.md (the table), plots/similarity-NAME.png (learned vs target class
similarities), plots/training-NAME.png (from the run's metrics.jsonl when it is beside the checkpoint),
plots/compare.png (the runs side by side) and, with queries and captions, plots/nearest.png (`xclr_eval.gallery`).
Checkpoints, DATA (a directory), --classnames and OUT may be URLs (`xclr_schemas.storage`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch

from xclr_eval import gallery, plots
from xclr_eval.errors import EvalError
from xclr_eval.features import extract_features, load_encoder
from xclr_eval.naming import run_dir
from xclr_eval.options import EvalOptions
from xclr_eval.registry import Inputs, score
from xclr_eval.report import console_line, markdown_table
from xclr_eval.text import caption_embeddings, class_caption_embeddings
from xclr_schemas import storage
from xclr_schemas.atomic import write_atomic, write_json_atomic
from xclr_schemas.names import CAPTION_MODEL, METRICS, default_caption_model
from xclr_train.checkpoint import CheckpointError
from xclr_train.evalsets import EvalSet, EvalSetError, caption_ids, combine, load_sets
from xclr_train.models import Encoder


@dataclass(frozen=True)
class Combined:
    """The images every checkpoint is evaluated on: the database rows, then the query rows (`query` marks them;
    None = one set, split by `xclr_train.eval_metrics.split`), and caption ids with their embeddings when every image
    has a caption and a query set was given. `database` and `queries` are the sets as loaded."""

    database: EvalSet
    queries: EvalSet | None
    evalset: EvalSet
    query: np.ndarray | None
    caption: np.ndarray | None
    caption_embeddings: np.ndarray | None

    @staticmethod
    def of(database: EvalSet, queries: EvalSet | None, text_model: str) -> Combined:
        if queries is None:
            return Combined(database, None, database, None, None, None)
        both, query = combine(database, queries)
        captions = caption_ids(both)
        if captions is None:
            return Combined(database, queries, both, query, None, None)
        texts, caption = captions
        return Combined(database, queries, both, query, caption, caption_embeddings(texts, text_model))


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint to evaluate: its run name, where it is, its encoder and the rest of the checkpoint."""

    name: str
    path: str
    model: Encoder
    info: dict


@dataclass(frozen=True)
class Evaluation:
    """Everything the loop needs: the options, the checkpoints, the images, the class captions' embeddings (C, e)
    and the device features are computed on."""

    options: EvalOptions
    checkpoints: tuple[Checkpoint, ...]
    images: Combined
    text: np.ndarray
    device: torch.device


def run(options: EvalOptions) -> None:
    """The whole command (module docstring); raises EvalError with a one-line message."""
    job = load(options)
    with storage.local_dir(options.out) as local:
        runs = evaluate(job, local)
        plots.compare_runs({n: r["metrics"] for n, r in runs.items()},
                           f"xclr-eval on {options.queries or options.data}", local / "plots" / "compare.png")
        write_json_atomic(local / "results.json", _results(options, job.images, runs))
        write_atomic(local / "results.md", lambda tmp: tmp.write_text(markdown_table(runs)))
    click.echo(f"results: {storage.join(options.out, 'results.json')}, {storage.join(options.out, 'results.md')}; "
               f"plots: {storage.join(options.out, 'plots')}")


def load(options: EvalOptions) -> Evaluation:
    """The sets, checkpoints and caption embeddings `options` names; says what was loaded."""
    o = options
    try:
        database, queries = load_sets(o.data, o.queries, o.classnames, o.split, o.limit, o.label_fields)
        models = [load_encoder(storage.fetch(c)) for c in o.checkpoints]
    except (EvalSetError, CheckpointError, FileNotFoundError) as exc:
        raise EvalError(str(exc)) from None
    model_name = o.text_model or default_caption_model()
    text = class_caption_embeddings(database.classnames, o.template, model_name)
    for what, source, s in (("labelled images", o.data, database), ("queries", o.queries, queries)):
        if s:
            click.echo(f"{len(s.images)} {what} of {len(s.classnames)} classes from {source}"
                       + (f" (skipped: {dict(s.skipped)})" if s.skipped else ""))
    device = torch.device("cuda" if o.device == "auto" and torch.cuda.is_available() else
                          "cpu" if o.device == "auto" else o.device)
    checkpoints = tuple(Checkpoint(n, c, m, i) for n, c, (m, i) in zip(o.names, o.checkpoints, models))
    return Evaluation(o, checkpoints, Combined.of(database, queries, model_name), text, device)


def evaluate(job: Evaluation, out: Path) -> dict[str, dict]:
    """Scores and per-run plots of every checkpoint, in OUT/plots: {name: results}."""
    runs, found = {}, {}
    for checkpoint in job.checkpoints:
        runs[checkpoint.name], features, ok = _evaluate_one(job, checkpoint, out)
        if job.images.caption is not None:
            found[checkpoint.name] = gallery.nearest(features, np.flatnonzero(ok), job.images.query, job.options.seed)
    if found:
        images = job.images
        gallery.plot_nearest(found, images.evalset.images, images.caption, images.evalset.captions,
                             out / "plots" / "nearest.png")
    return runs


def _evaluate_one(job: Evaluation, checkpoint: Checkpoint, out: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(the results of one checkpoint, its features, which images decoded); draws its plots, says its scores."""
    images, options, name, info = job.images, job.options, checkpoint.name, checkpoint.info
    evalset = images.evalset
    features, ok = extract_features(checkpoint.model, evalset.images, info["config"]["image_size"], job.device,
                                    options.batch_size)
    labels = evalset.labels[ok]
    try:
        scores = score(Inputs(
            features=features, labels=labels, text=job.text, seed=options.seed,
            query=None if images.query is None else images.query[ok],
            more_labels={f: v[ok] for f, v in evalset.more_labels.items()},
            caption=None if images.caption is None else images.caption[ok],
            caption_embeddings=images.caption_embeddings, clustering=options.clustering,
            linear_probe=options.linear_probe))
    except ValueError as exc:
        raise EvalError(f"{name}: {exc}") from None
    metrics, similarity = scores.metrics, scores.class_similarity
    plots.similarity_heatmaps(np.array(similarity["learned"]), np.array(similarity["target"]), evalset.classnames,
                              f"{name}: semantic rho {metrics['semantic_alignment']:.3f}",
                              out / "plots" / f"similarity-{name}.png")
    run = run_dir(checkpoint.path)
    if run is not None and storage.is_file(storage.join(run, METRICS)):
        plots.training_curves(storage.fetch(storage.join(run, METRICS)), name, out / "plots" / f"training-{name}.png")
    if options.save_features is not None:
        _save_npz(options.save_features, features=features, labels=labels, classnames=np.array(evalset.classnames))
    click.echo(console_line(name, metrics))
    result = {"checkpoint": str(checkpoint.path), "loss": info["config"]["loss"], "step": info["step"],
              "epoch": info["epoch"], "config": info["config"], "images": int(ok.sum()),
              "skipped_undecodable_image": int((~ok).sum()), "metrics": metrics, "class_similarity": similarity}
    return result, features, ok


def _results(options: EvalOptions, images: Combined, runs: dict[str, dict]) -> dict:
    """results.json: what was evaluated, with which options, and every run's results."""
    database, queries = images.database, images.queries
    return {"data": options.data, "images": len(database.images), "skipped": dict(database.skipped),
            **({"queries": options.queries, "query_images": len(queries.images),
                "query_skipped": dict(queries.skipped)} if queries else {}),
            "label_fields": list(options.label_fields), "classnames": database.classnames,
            "template": options.template, "text_model": options.text_model or CAPTION_MODEL, "seed": options.seed,
            "runs": runs}


def _save_npz(path: str, **arrays: np.ndarray) -> None:
    """`arrays` as an .npz at `path` (a path or URL), never half-written."""
    if not storage.is_url(path):
        write_atomic(Path(path), lambda tmp: np.savez(tmp.open("wb"), **arrays))
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "features.npz"
        np.savez(local, **arrays)
        storage.upload(local, path)
