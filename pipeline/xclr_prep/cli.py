"""`xclr-prep`: the data-preparation command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from xclr_prep.corpus import FORMATS, CorpusSpec
from xclr_prep.errors import PrepError
from xclr_schemas import storage

PATH_HELP = "A local path or an fsspec URL (s3://, gs://, ...)."
RAY_ADDRESS = click.option(
    "--ray-address", envvar="RAY_ADDRESS", default=None,
    help="Join this Ray cluster [default: $RAY_ADDRESS, which `ray job submit` sets; else start a local Ray].")


@click.group()
def cli() -> None:
    """Prepare X-CLR training data: caption embeddings, then caption-similarity graphs and shards."""


@cli.command()
@click.argument("corpus", nargs=-1, required=True)
@click.option("--out", required=True, help=f"Embed directory. {PATH_HELP}")
@click.option("--format", "input_format", type=click.Choice(FORMATS), help="Input format (default: from names).")
@click.option("--key-col", default="key", show_default=True)
@click.option("--caption-col", default="caption", show_default=True)
@click.option("--image-col", default=None, help="Column with an image path or the image bytes.")
@click.option("--label-col", default=None, help="Label column (tars: field of KEY.json).")
@click.option("--classnames", default=None,
              help="Class-label mode: a file (path or URL) of one class name per line; captions become --template "
                   "of the label's name.")
@click.option("--template", default="a photo of a {}", show_default=True, help="Caption template for class-label mode.")
@click.option("--model", default=None, help="sentence-transformers name or path [default: packaged all-MiniLM-L6-v2].")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Storage dtype of the embeddings.")
@click.option("--too-long", type=click.Choice(["truncate", "skip"]), default="truncate", show_default=True,
              help="Captions over the model's token limit: truncate (and count) or skip (and count).")
@click.option("--part-size", default=100_000, show_default=True,
              help="Rows per work unit (an input file may make several).")
@click.option("--num-workers", type=int, default=None, help="Actors [default: one per GPU, else one per 8 CPUs].")
@click.option("--gpus-per-worker", default=1.0, show_default=True)
@RAY_ADDRESS
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def embed(corpus: tuple[str, ...], out: str, input_format: str | None, key_col: str, caption_col: str,
          image_col: str | None, label_col: str | None, classnames: str | None, template: str, model: str | None,
          batch_size: int, device: str, dtype: str, too_long: str, part_size: int, num_workers: int | None,
          gpus_per_worker: float, ray_address: str | None, no_progress: bool) -> None:
    """Embed the unique captions of CORPUS (files, directories, globs; local or URLs) into OUT."""
    from xclr_prep.embed_stage import EmbedOptions, run_embed

    names = None
    if classnames is not None:
        if not label_col:
            raise click.UsageError("--classnames needs --label-col")
        if not storage.is_file(classnames):
            raise click.UsageError(f"--classnames: no file {classnames}")
        names = tuple(line.strip() for line in storage.read_text(classnames).splitlines() if line.strip())
        if not names:
            raise click.UsageError(f"{classnames} holds no class names")
    if "{}" not in template:
        raise click.UsageError("--template must contain {}")
    spec = CorpusSpec(key_col=key_col, caption_col=caption_col, image_col=image_col, label_col=label_col,
                      classnames=names, template=template)
    opts = EmbedOptions(inputs=corpus, out=Path(), spec=spec, input_format=input_format, model=model,
                        batch_size=batch_size, device=device, dtype=dtype, too_long=too_long, part_size=part_size,
                        num_workers=num_workers, gpus_per_worker=gpus_per_worker, ray_address=ray_address,
                        progress=not no_progress)
    with storage.local_dir(out) as local:
        manifest = run_embed(replace(opts, out=local))
    counts = manifest["counts"]
    click.echo(
        f"embedded {counts['unique_captions']} unique captions for {counts['kept']} samples "
        f"({counts['skipped_total']} rows skipped, {counts['files_skipped']} files unreadable) -> {out}"
    )
    if counts["skipped"]:
        click.echo("skipped: " + json.dumps(counts["skipped"]))


@cli.command()
@click.argument("embed_dir")
@click.option("--out", required=True, help=f"Shards directory. {PATH_HELP}")
@click.option("--k", type=int, default=None, help="Neighbours per caption [default: 32, capped at U - 1].")
@click.option("--index", "method", type=click.Choice(["auto", "exact", "ivf", "hnsw"]), default="auto",
              show_default=True,
              help="Search method (auto: exact on GPUs and on CPUs while cheap; above that, HNSW if its index fits "
                   "in half the smallest Ray node's memory, else IVF, else exact).")
@click.option("--recall-target", default=0.95, show_default=True,
              help="Approximate methods are tuned to this recall@k; below it (measured) the command fails.")
@click.option("--allow-low-recall", is_flag=True, help="Keep a graph whose measured recall is below the target.")
@click.option("--graph", "graph_dir", default=None,
              help="Reuse this graph (e.g. OTHER_OUT/graph) instead of searching again: re-pack only.")
@click.option("--group-size", default=8, show_default=True, help="Neighbour group size (1: plain random order).")
@click.option("--shard-samples", default=10_000, show_default=True, help="At most this many samples per shard.")
@click.option("--shard-bytes", default=1_000_000_000, show_default=True, help="About at most this many bytes.")
@click.option("--with-embeddings", is_flag=True, help="Add KEY.emb.npy (fp16 caption embedding) to every sample.")
@click.option("--seed", default=0, show_default=True, help="Seed of the shard layout (group seeds, group order).")
@click.option("--search-seed", type=int, default=None,
              help="Seed of the search's samples: IVF training points, tuning and recall queries, background pairs "
                   "[default: 0].")
@click.option("--block-size", default=16_384, show_default=True, help="Query captions per search unit.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--num-workers", type=int, default=None, help="Actors [default: one per GPU, else one per node].")
@click.option("--gpus-per-worker", default=1.0, show_default=True)
@RAY_ADDRESS
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def graph(embed_dir: str, out: str, k: int | None, method: str, recall_target: float, allow_low_recall: bool,
          graph_dir: str | None, group_size: int, shard_samples: int, shard_bytes: int, with_embeddings: bool,
          seed: int, search_seed: int | None, block_size: int, device: str, num_workers: int | None,
          gpus_per_worker: float, ray_address: str | None, no_progress: bool) -> None:
    """Find every caption's top-k neighbours in EMBED_DIR and write neighbour-grouped training shards to OUT.

    EMBED_DIR and --graph may be URLs: they are then copied into local work directories first.
    """
    from xclr_prep.graph_stage import GraphOptions, run_graph
    from xclr_prep.shard_stage import ShardOptions

    shards = ShardOptions(group_size=group_size, shard_samples=shard_samples, shard_bytes=shard_bytes,
                          with_embeddings=with_embeddings, seed=seed)
    for name, value in (("EMBED_DIR", embed_dir), ("--graph", graph_dir)):
        if value is not None and not storage.is_dir(value):
            raise click.UsageError(f"{name}: no directory {value}")
    with storage.local_dir(out) as local:
        opts = GraphOptions(embed_dir=storage.fetch(embed_dir).resolve(), out=local.resolve(), k=k, method=method,
                            recall_target=recall_target, allow_low_recall=allow_low_recall, search_seed=search_seed,
                            graph=storage.fetch(graph_dir).resolve() if graph_dir else None, shards=shards,
                            block_size=block_size, device=device, num_workers=num_workers,
                            gpus_per_worker=gpus_per_worker, ray_address=ray_address, progress=not no_progress)
        manifest = run_graph(opts)
    g, counts = manifest["graph"], manifest["counts"]
    click.echo(f"graph: k={g['k']} {g['method']} recall@k={g['recall']['measured']:.4f} "
               f"background={g['background_similarity']['mean']:.3f} k-th mean={g['kth_similarity_mean']:.3f}")
    click.echo(f"wrote {counts['written']} samples in {counts['shards']} shards "
               f"({counts['skipped_total']} skipped; in-group neighbours per sample "
               f"{manifest['groups']['in_group_neighbors_mean']:.2f}) -> {out}")
    if counts["skipped"]:
        click.echo("skipped: " + json.dumps(counts["skipped"]))


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        raise SystemExit(130)
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code)
    except PrepError as e:
        click.echo(f"xclr-prep: error: {e}", err=True)
        raise SystemExit(2)
