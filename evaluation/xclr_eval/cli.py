"""`xclr-eval`: evaluate one or more trained checkpoints on a labelled evaluation set.

Writes to OUT: results.json (everything), results.md (the table), plots/similarity-NAME.png (learned vs target
class similarities), plots/training-NAME.png (from the run's metrics.jsonl when it is beside the checkpoint) and
plots/compare.png (the runs side by side). A run's NAME is its run directory (RUN/checkpoints/latest.pt -> RUN),
with the checkpoint's stem appended when it is not latest.pt. Checkpoints, DATA (a directory), --classnames and
OUT may be URLs (`xclr_schemas.storage`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import numpy as np
import torch

from xclr_eval import plots
from xclr_eval.evalsets import EvalSetError, load_eval_set
from xclr_eval.features import extract_features, load_encoder
from xclr_eval.metrics import evaluate
from xclr_eval.report import markdown_table
from xclr_eval.text import class_caption_embeddings, default_model
from xclr_schemas import storage
from xclr_schemas.atomic import write_atomic, write_json_atomic
from xclr_train.checkpoint import LATEST, CheckpointError


def run_dir(checkpoint: str) -> str | None:
    """RUN for a checkpoint at RUN/checkpoints/NAME.pt (a path or URL), else None."""
    folder = storage.parent(checkpoint)
    return storage.parent(folder) if storage.basename(folder) == "checkpoints" else None


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
              "WebDataset tars with KEY.json 'label' (a directory, sizes.json or brace pattern; a URL must be a "
              "directory).")
@click.option("--out", required=True, help="Results directory (a path or URL).")
@click.option("--classnames", default=None,
              help="Class names in label order, one per line [default: DATA/classnames.txt, folder names, or "
              "Fashion-MNIST's].")
@click.option("--template", default="a photo of a {}", show_default=True,
              help="Class caption for the semantic-alignment target.")
@click.option("--text-model", default=None, help="sentence-transformers model of the class captions [default: "
              "packaged all-MiniLM-L6-v2, as xclr-prep].")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Which IDX split (Fashion-MNIST).")
@click.option("--limit", type=click.IntRange(min=2), default=None, help="Only the first N labelled images.")
@click.option("--save-features", default=None,
              help="Write features and labels to this .npz (one checkpoint only).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Train/test split, k-means and probe seed.")
def main(checkpoints: tuple[str, ...], data: str, out: str, classnames: str | None, template: str,
         text_model: str | None, split: str, limit: int | None, save_features: str | None, device: str,
         batch_size: int, seed: int) -> None:
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
        evalset = load_eval_set(str(storage.fetch(data)), classnames and storage.fetch(classnames), split, limit)
        models = [load_encoder(storage.fetch(c)) for c in checkpoints]
    except (EvalSetError, CheckpointError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    text = class_caption_embeddings(evalset.classnames, template, text_model or default_model())
    click.echo(f"{len(evalset.images)} labelled images of {len(evalset.classnames)} classes from {data}"
               + (f" (skipped: {dict(evalset.skipped)})" if evalset.skipped else ""))
    with storage.local_dir(out) as local:
        runs = _evaluate(names, checkpoints, models, evalset, text, local, save_features, dev, batch_size, seed)
        plots.compare_runs({n: r["metrics"] for n, r in runs.items()}, f"xclr-eval on {data}",
                           local / "plots" / "compare.png")
        write_json_atomic(local / "results.json", {
            "data": data, "images": len(evalset.images), "skipped": dict(evalset.skipped),
            "classnames": evalset.classnames, "template": template, "text_model": text_model or "all-MiniLM-L6-v2",
            "seed": seed, "runs": runs})
        write_atomic(local / "results.md", lambda tmp: tmp.write_text(markdown_table(runs)))
    click.echo(f"results: {storage.join(out, 'results.json')}, {storage.join(out, 'results.md')}; "
               f"plots: {storage.join(out, 'plots')}")


def _evaluate(names: list[str], checkpoints: tuple[str, ...], models: list, evalset, text: np.ndarray, out: Path,
              save_features: str | None, dev: torch.device, batch_size: int, seed: int) -> dict:
    """Metrics and per-run plots of every checkpoint: {name: results}."""
    runs = {}
    for name, checkpoint, (model, info) in zip(names, checkpoints, models):
        features, ok = extract_features(model, evalset.images, info["config"]["image_size"], dev, batch_size)
        labels = evalset.labels[ok]
        try:
            metrics = evaluate(features, labels, text, seed)
        except ValueError as exc:
            raise click.ClickException(f"{name}: {exc}") from None
        similarity = metrics.pop("class_similarity")
        runs[name] = {"checkpoint": str(checkpoint), "loss": info["config"]["loss"], "step": info["step"],
                      "epoch": info["epoch"], "config": info["config"], "images": int(ok.sum()),
                      "skipped_undecodable_image": int((~ok).sum()), "metrics": metrics,
                      "class_similarity": similarity}
        plots.similarity_heatmaps(np.array(similarity["learned"]), np.array(similarity["target"]),
                                  evalset.classnames, f"{name}: semantic rho {metrics['semantic_alignment']:.3f}",
                                  out / "plots" / f"similarity-{name}.png")
        run = run_dir(checkpoint)
        if run is not None and storage.is_file(storage.join(run, "metrics.jsonl")):
            plots.training_curves(storage.fetch(storage.join(run, "metrics.jsonl")), name,
                                  out / "plots" / f"training-{name}.png")
        if save_features is not None:
            save_npz(save_features, features=features, labels=labels, classnames=np.array(evalset.classnames))
        click.echo(f"{name}: kNN {metrics['knn_accuracy']:.3f}  linear {metrics['linear_probe_accuracy']:.3f}  "
                   f"mAP {metrics['mAP']:.3f}  semantic rho {metrics['semantic_alignment']:.3f}")
    return runs
