"""`xclr-eval`: evaluate one or more trained checkpoints on a labelled evaluation set, split once into a database
and queries, or on a database (DATA) and a held-out query set (--queries).

Writes to OUT: results.json (everything), results.md (the table), plots/similarity-NAME.png (learned vs target
class similarities), plots/training-NAME.png (from the run's metrics.jsonl when it is beside the checkpoint),
plots/compare.png (the runs side by side) and, with --queries, plots/nearest.png (a few queries and their nearest
database images under each run). A run's NAME is its run directory (RUN/checkpoints/latest.pt -> RUN),
with the checkpoint's stem appended when it is not latest.pt. Checkpoints, DATA (a directory), --classnames and
OUT may be URLs (`xclr_schemas.storage`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch

from xclr_eval import plots
from xclr_eval.evalsets import EvalSet, EvalSetError, align, load_eval_set
from xclr_eval.features import decode, extract_features, load_encoder
from xclr_eval.metrics import evaluate, normalise
from xclr_eval.report import markdown_table
from xclr_eval.text import caption_embeddings, class_caption_embeddings
from xclr_schemas import storage
from xclr_schemas.atomic import write_atomic, write_json_atomic
from xclr_schemas.names import CAPTION_MODEL, CHECKPOINTS, LATEST, METRICS, default_caption_model
from xclr_train.checkpoint import CheckpointError

NEAREST_QUERIES = 6  # rows of plots/nearest.png
NEAREST_SHOWN = 5  # database images per query and run


def run_dir(checkpoint: str) -> str | None:
    """RUN for a checkpoint at RUN/checkpoints/NAME.pt (a path or URL), else None."""
    folder = storage.parent(checkpoint)
    return storage.parent(folder) if storage.basename(folder) == CHECKPOINTS else None


def run_name(checkpoint: str) -> str:
    run, name = run_dir(checkpoint), storage.basename(checkpoint)
    stem = name.rsplit(".", 1)[0]
    if run is None:
        return stem
    return storage.basename(run) if name == LATEST else f"{storage.basename(run)}-{stem}"


def save_npz(path: str, **arrays: np.ndarray) -> None:
    """`arrays` as an .npz at `path` (a path or URL), never half-written."""
    if not storage.is_url(path):
        write_atomic(Path(path), lambda tmp: np.savez(tmp.open("wb"), **arrays))
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "features.npz"
        np.savez(local, **arrays)
        storage.upload(local, path)


@click.command()
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--data", required=True, help="Fashion-MNIST IDX directory, an image folder per class, or "
              "WebDataset tars with labels in KEY.json (see --label-field; a directory, sizes.json or brace pattern; "
              "a URL must be a directory).")
@click.option("--queries", default=None, help="A held-out query set (same forms as --data; e.g. another image "
              "style): DATA is then the database, and caption retrieval and caption alignment are measured when "
              "both have captions (KEY.txt).")
@click.option("--label-field", "label_fields", multiple=True, default=("label",), show_default=True,
              help="KEY.json field(s) of tar sets to use as labels: the first is the primary label of every "
              "metric, each further one adds kNN and linear-probe accuracy. Integer fields index --classnames, "
              "string fields name their classes.")
@click.option("--out", required=True, help="Results directory (a path or URL).")
@click.option("--classnames", default=None,
              help="Class names in label order, one per line [default: DATA/classnames.txt, folder names, or "
              "Fashion-MNIST's].")
@click.option("--template", default="a photo of a {}", show_default=True,
              help="Class caption for the semantic-alignment target.")
@click.option("--text-model", default=None, help="sentence-transformers model of the class captions [default: "
              f"packaged {CAPTION_MODEL}, as xclr-prep].")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Which IDX split (Fashion-MNIST).")
@click.option("--limit", type=click.IntRange(min=2), default=None, help="Only the first N labelled images.")
@click.option("--save-features", default=None,
              help="Write features and labels to this .npz (one checkpoint only).")
@click.option("--clustering/--no-clustering", default=True, show_default=True,
              help="k-means ARI/NMI, silhouette, Davies-Bouldin and Dunn (10 k-means restarts: the slowest metrics "
              "when there are many classes).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Train/test split, k-means and probe seed.")
def main(checkpoints: tuple[str, ...], data: str, queries: str | None, label_fields: tuple[str, ...], out: str,
         classnames: str | None, template: str, text_model: str | None, split: str, limit: int | None,
         save_features: str | None, clustering: bool, device: str, batch_size: int, seed: int) -> None:
    """Backbone features of each CHECKPOINT on a labelled set: kNN and linear-probe accuracy, retrieval,
    clustering and semantic alignment, as JSON, Markdown and plots in OUT."""
    names = [run_name(c) for c in checkpoints]
    if len(set(names)) < len(names):
        raise click.ClickException(f"two checkpoints would share a name in {', '.join(names)}")
    if save_features is not None and len(checkpoints) > 1:
        raise click.ClickException("--save-features takes one checkpoint")
    if "{}" not in template:
        raise click.ClickException(f"--template {template!r} has no {{}} for the class name")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    try:
        names_file = classnames and storage.fetch(classnames)
        evalset = load_eval_set(str(storage.fetch(data)), names_file, split, limit, label_fields)
        query_set = queries and align(load_eval_set(str(storage.fetch(queries)), names_file, split, limit,
                                                     label_fields), evalset)
        models = [load_encoder(storage.fetch(c)) for c in checkpoints]
    except (EvalSetError, CheckpointError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    model_name = text_model or default_caption_model()
    text = class_caption_embeddings(evalset.classnames, template, model_name)
    for what, source, s in (("labelled images", data, evalset), ("queries", queries, query_set)):
        if s:
            click.echo(f"{len(s.images)} {what} of {len(s.classnames)} classes from {source}"
                       + (f" (skipped: {dict(s.skipped)})" if s.skipped else ""))
    combined = _Combined.of(evalset, query_set, model_name)
    with storage.local_dir(out) as local:
        runs = _evaluate(names, checkpoints, models, combined, text, local, save_features, clustering, dev,
                         batch_size, seed)
        plots.compare_runs({n: r["metrics"] for n, r in runs.items()}, f"xclr-eval on {queries or data}",
                           local / "plots" / "compare.png")
        write_json_atomic(local / "results.json", {
            "data": data, "images": len(evalset.images), "skipped": dict(evalset.skipped),
            **({"queries": queries, "query_images": len(query_set.images), "query_skipped": dict(query_set.skipped)}
               if query_set else {}),
            "label_fields": list(label_fields), "classnames": evalset.classnames, "template": template,
            "text_model": text_model or CAPTION_MODEL, "seed": seed, "runs": runs})
        write_atomic(local / "results.md", lambda tmp: tmp.write_text(markdown_table(runs)))
    click.echo(f"results: {storage.join(out, 'results.json')}, {storage.join(out, 'results.md')}; "
               f"plots: {storage.join(out, 'plots')}")


@dataclass(frozen=True)
class _Combined:
    """The images every checkpoint is evaluated on: the database rows, then the query rows (`query` marks them;
    None = one set, split by `metrics.split`), and caption ids with their embeddings when every image has a caption
    and a query set was given."""

    evalset: EvalSet
    query: np.ndarray | None
    caption: np.ndarray | None
    caption_embeddings: np.ndarray | None

    @staticmethod
    def of(database: EvalSet, queries: EvalSet | None, text_model: str) -> _Combined:
        if queries is None:
            return _Combined(database, None, None, None)
        both = EvalSet(database.images + queries.images, np.concatenate([database.labels, queries.labels]),
                       database.classnames, database.skipped,
                       database.captions + queries.captions if database.captions and queries.captions else None,
                       {f: np.concatenate([v, queries.more_labels[f]]) for f, v in database.more_labels.items()},
                       database.more_classnames)
        query = np.arange(len(both.images)) >= len(database.images)
        if both.captions is None or "" in both.captions:
            return _Combined(both, query, None, None)
        texts, caption = np.unique(both.captions, return_inverse=True)
        return _Combined(both, query, caption, caption_embeddings(texts.tolist(), text_model))


def _evaluate(names: list[str], checkpoints: tuple[str, ...], models: list, combined: _Combined, text: np.ndarray,
              out: Path, save_features: str | None, clustering: bool, dev: torch.device, batch_size: int,
              seed: int) -> dict:
    """Metrics and per-run plots of every checkpoint: {name: results}."""
    evalset = combined.evalset
    runs, nearest = {}, {}
    for name, checkpoint, (model, info) in zip(names, checkpoints, models):
        features, ok = extract_features(model, evalset.images, info["config"]["image_size"], dev, batch_size)
        labels = evalset.labels[ok]
        try:
            metrics = evaluate(features, labels, text, seed, None if combined.query is None else combined.query[ok],
                               {f: v[ok] for f, v in evalset.more_labels.items()},
                               None if combined.caption is None else combined.caption[ok], combined.caption_embeddings,
                               clustering)
        except ValueError as exc:
            raise click.ClickException(f"{name}: {exc}") from None
        if combined.caption is not None:
            nearest[name] = _nearest(features, np.flatnonzero(ok), combined, seed)
        similarity = metrics.pop("class_similarity")
        runs[name] = {"checkpoint": str(checkpoint), "loss": info["config"]["loss"], "step": info["step"],
                      "epoch": info["epoch"], "config": info["config"], "images": int(ok.sum()),
                      "skipped_undecodable_image": int((~ok).sum()), "metrics": metrics,
                      "class_similarity": similarity}
        plots.similarity_heatmaps(np.array(similarity["learned"]), np.array(similarity["target"]),
                                  evalset.classnames, f"{name}: semantic rho {metrics['semantic_alignment']:.3f}",
                                  out / "plots" / f"similarity-{name}.png")
        run = run_dir(checkpoint)
        if run is not None and storage.is_file(storage.join(run, METRICS)):
            plots.training_curves(storage.fetch(storage.join(run, METRICS)), name,
                                  out / "plots" / f"training-{name}.png")
        if save_features is not None:
            save_npz(save_features, features=features, labels=labels, classnames=np.array(evalset.classnames))
        click.echo(f"{name}: kNN {metrics['knn_accuracy']:.3f}  linear {metrics['linear_probe_accuracy']:.3f}  "
                   f"mAP {metrics['mAP']:.3f}  semantic rho {metrics['semantic_alignment']:.3f}"
                   + (f"  caption R@1 {metrics['caption_R@1']:.3f}  caption rho {metrics['caption_alignment']:.3f}"
                      if "caption_R@1" in metrics else ""))
    if nearest:
        _plot_nearest(nearest, combined, out / "plots" / "nearest.png")
    return runs


def _nearest(features: np.ndarray, rows: np.ndarray, combined: _Combined, seed: int) -> dict[int, np.ndarray]:
    """{query row: its NEAREST_SHOWN nearest database rows by cosine} for NEAREST_QUERIES query rows drawn with
    `seed` (the same rows for every run); rows index the combined set, `features` holds its decodable `rows`."""
    x = normalise(features)
    is_query = combined.query[rows]
    chosen = np.random.default_rng(seed).permutation(np.flatnonzero(combined.query))[:NEAREST_QUERIES]
    db = np.flatnonzero(~is_query)
    position = {row: i for i, row in enumerate(rows)}
    result = {}
    for q in sorted(chosen):
        if q in position:
            sims = x[db] @ x[position[q]]
            result[int(q)] = rows[db[np.argsort(-sims)[:NEAREST_SHOWN]]]
    return result


def _plot_nearest(nearest: dict[str, dict[int, np.ndarray]], combined: _Combined, path: Path) -> None:
    images, captions = combined.evalset.images, combined.caption
    queries = sorted(set.intersection(*(set(n) for n in nearest.values())))
    shown = {run: [[decode(images[r]) for r in n[q]] for q in queries] for run, n in nearest.items()}
    same = {run: np.array([captions[n[q]] == captions[q] for q in queries]) for run, n in nearest.items()}
    plots.nearest_images([decode(images[q]) for q in queries], shown, same,
                         [combined.evalset.captions[q] for q in queries], path)
