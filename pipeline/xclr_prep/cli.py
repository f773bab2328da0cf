"""`xclr-prep`: the data-preparation command line."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import click

from xclr_prep.corpus import CorpusSpec
from xclr_prep.errors import PrepError
from xclr_prep.options import EmbedOptions, GraphOptions, ShardOptions
from xclr_schemas import storage
from xclr_schemas.options import UserError, click_options
from xclr_schemas.out_lock import OutputBusy, exclusive

PATH_HELP = "A local path or an fsspec URL (s3://, gs://, ...)."


@click.group(context_settings={"max_content_width": 120})
def cli() -> None:
    """Prepare X-CLR training data: caption embeddings, then caption-similarity graphs and shards."""


def _classnames(path: str | None) -> tuple[str, ...] | None:
    """The class names in file `path`, one per line (blank lines ignored)."""
    if path is None:
        return None
    if not storage.is_file(path):
        raise PrepError(f"--classnames: no file {path}")
    names = tuple(line.strip() for line in storage.read_text(path).splitlines() if line.strip())
    if not names:
        raise PrepError(f"{path} holds no class names")
    return names


def _split(options: dict, cls: type) -> dict:
    """The entries of `options` that are fields of `cls`, removed from `options`."""
    return {f.name: options.pop(f.name) for f in fields(cls) if f.name in options}


@cli.command()
@click.argument("corpus", nargs=-1, required=True)
@click.option("--out", required=True, help=f"Embed directory. {PATH_HELP}")
@click.option("--classnames", default=None,
              help="Class-label mode: a file (path or URL) of one class name per line; captions become --template "
                   "of the label's name.")
@click_options(CorpusSpec, EmbedOptions)
def embed(corpus: tuple[str, ...], out: str, classnames: str | None, **options: Any) -> None:
    """Embed the unique captions of CORPUS (files, directories, globs; local or URLs) into OUT."""
    from xclr_prep.embed_stage import run_embed

    spec = CorpusSpec(**_split(options, CorpusSpec), classnames=_classnames(classnames))
    opts = EmbedOptions(inputs=corpus, out=Path(), spec=spec, **options)
    with exclusive(out), storage.local_dir(out) as local:
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
@click.option("--graph", "graph_dir", default=None,
              help="Reuse this graph (e.g. OTHER_OUT/graph) instead of searching again: re-pack only.")
@click_options(GraphOptions, ShardOptions)
def graph(embed_dir: str, out: str, graph_dir: str | None, **options: Any) -> None:
    """Find every caption's top-k neighbours in EMBED_DIR and write neighbour-grouped training shards to OUT.

    EMBED_DIR and --graph may be URLs: they are then copied into local work directories first.
    """
    from xclr_prep.graph_stage import run_graph

    shards = ShardOptions(**_split(options, ShardOptions))
    opts = GraphOptions(embed_dir=Path(), out=Path(), graph=Path() if graph_dir else None, shards=shards, **options)
    for name, value in (("EMBED_DIR", embed_dir), ("--graph", graph_dir)):
        if value is not None and not storage.is_dir(value):
            raise click.UsageError(f"{name}: no directory {value}")
    with exclusive(out), storage.local_dir(out) as local:
        manifest = run_graph(replace(opts, embed_dir=storage.fetch(embed_dir).resolve(), out=local.resolve(),
                                     graph=storage.fetch(graph_dir).resolve() if graph_dir else None))
    g, counts = manifest["graph"], manifest["counts"]
    click.echo(f"graph: k={g['k']} {g['method']} recall@k={g['recall']['measured']:.4f} "
               f"background={g['background_similarity']['mean']:.3f} k-th mean={g['kth_similarity_mean']:.3f}")
    click.echo(f"wrote {counts['written']} samples in {counts['shards']} shards "
               f"({counts['skipped_total']} skipped; in-group neighbours per sample "
               f"{manifest['groups']['in_group_neighbors_mean']:.2f}) -> {out}")
    if counts["skipped"]:
        click.echo("skipped: " + json.dumps(counts["skipped"]))


def main(argv: list[str] | None = None) -> None:
    """The console script: `cli` on `argv` (default: sys.argv). A bad input (PrepError, a busy OUT, a UserError
    such as a store's StorageError) is one line "xclr-prep: error: ..." and exit status 2; click's usage errors
    are click's own lines (status 2); ^C is status 130."""
    try:
        cli(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        raise SystemExit(130)
    except (PrepError, OutputBusy, UserError) as e:
        click.echo(f"xclr-prep: error: {e}", err=True)
        raise SystemExit(2)
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code)
