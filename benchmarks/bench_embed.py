"""Benchmark: `xclr-prep embed` against a plain `SentenceTransformer.encode` over the same captions, in one run.

    .venv/bin/python benchmarks/bench_embed.py --n 20000 --n 100000 --out benchmarks/results/embed.json

For each N: the first N WordNet captions (definitions and examples) as one Parquet file; then, each in its own
process so that memory is measured cleanly,
  - plain:  load the model, ``model.encode(captions, batch_size=B)`` (all captions in one call, as
            sentence-transformers sorts them by length itself), normalise;
  - xclr:   ``xclr-prep embed`` end to end: local Ray start, actor start and model load, scan, dedup, encode,
            write; default options (float16 storage) and the same batch size.
Reported: captions/s (input captions over wall time), the ratio xclr / plain (against plain's encode time alone,
and against plain's load + encode), and the peak RSS of each process tree sampled at 10 Hz (Ray's own processes
included; harness.run_measured), next to the size of the data (caption bytes + float16 embeddings).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import pyarrow.parquet as pq
from harness import run_measured

from xclr_prep.sample_corpora import wordnet_captions
from xclr_schemas.names import MANIFEST

PLAIN = r"""
import json, sys, time
import numpy as np, pyarrow.parquet as pq
t0 = time.perf_counter()
from sentence_transformers import SentenceTransformer
from xclr_schemas import default_caption_model
model = SentenceTransformer(default_caption_model(), device="cpu", trust_remote_code=False)
texts = pq.read_table(sys.argv[1]).column("caption").to_pylist()
t1 = time.perf_counter()
emb = model.encode(texts, batch_size=int(sys.argv[2]), normalize_embeddings=True)
t2 = time.perf_counter()
print(json.dumps({"load_seconds": t1 - t0, "encode_seconds": t2 - t1, "rows": len(emb)}))
"""


def bench(n: int, batch_size: int, work: Path) -> dict:
    table = wordnet_captions(limit=n)
    corpus = work / f"wordnet-{n}.parquet"
    pq.write_table(table, corpus)
    captions = table.column("caption").to_pylist()
    data_bytes = sum(len(c.encode()) for c in captions) + len(set(captions)) * 384 * 2

    plain_run = run_measured([sys.executable, "-c", PLAIN, str(corpus), str(batch_size)], period=0.1)
    plain, plain_wall = json.loads(plain_run.stdout.strip().splitlines()[-1]), plain_run.wall_seconds
    embed_dir = work / f"embed-{n}"
    xclr_run = run_measured([sys.executable, "-m", "xclr_prep", "embed", str(corpus), "--out", str(embed_dir),
                             "--batch-size", str(batch_size), "--no-progress"], period=0.1)
    xclr_wall = xclr_run.wall_seconds
    manifest = json.loads((embed_dir / MANIFEST).read_text())
    return {
        "captions": n,
        "unique_captions": manifest["counts"]["unique_captions"],
        "plain_encode_per_s": n / plain["encode_seconds"],
        "plain_load_seconds": plain["load_seconds"],
        "plain_wall_per_s": n / plain_wall,
        "xclr_per_s": n / xclr_wall,
        "xclr_startup_seconds": manifest["run"]["startup_seconds"],
        "ratio_vs_plain_encode": plain["encode_seconds"] / xclr_wall,
        "ratio_vs_plain_load_and_encode": plain_wall / xclr_wall,
        "data_mib": data_bytes / 2**20,
        "plain_peak_rss_mib": plain_run.peak() / 2**20,
        "xclr_peak_rss_mib": xclr_run.peak() / 2**20,
    }


@click.command()
@click.option("--n", "sizes", multiple=True, type=int, default=[20_000], show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(sizes: tuple[int, ...], batch_size: int, out: Path | None) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            rows.append(bench(n, batch_size, Path(tmp)))
            click.echo(json.dumps(rows[-1]), err=True)
    click.echo("| captions | plain encode /s | xclr-prep /s | xclr / plain encode | xclr / plain load+encode "
               "| xclr start-up s | data MiB | peak RSS plain MiB | peak RSS xclr MiB |")
    click.echo("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        click.echo(f"| {r['captions']} | {r['plain_encode_per_s']:.0f} | {r['xclr_per_s']:.0f} "
                   f"| {r['ratio_vs_plain_encode']:.2f} | {r['ratio_vs_plain_load_and_encode']:.2f} "
                   f"| {r['xclr_startup_seconds']:.1f} | {r['data_mib']:.1f} | {r['plain_peak_rss_mib']:.0f} "
                   f"| {r['xclr_peak_rss_mib']:.0f} |")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"batch_size": batch_size, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
