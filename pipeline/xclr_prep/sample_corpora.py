"""Real corpora that work offline, built from Debian packages (shared/DESIGN.md section 8).

- WordNet (`wordnet-base`): every synset's definition and each quoted usage example, about 166k caption-like
  texts. Keys are ``wn{pos}{offset}`` for a definition and ``wn{pos}{offset}e{i}`` for its i-th example.
- Tuxpaint stamps (`tuxpaint-stamps-default`): about 800 PNG stamps; the caption is the first line of the
  ``.txt`` beside each PNG (a few have none), the label is the top-level category folder.

Used by the README's main job, the tests and the benchmarks. Run as a module to write them to disk::

    python -m xclr_prep.sample_corpora wordnet OUT.parquet [--limit N]
    python -m xclr_prep.sample_corpora tuxpaint OUT_DIR [--per-tar 100]
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.parquet as pq

WORDNET_DIR = Path("/usr/share/wordnet")
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
_WORDNET_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
_QUOTED = re.compile(r'"([^"]+)"')


def wordnet_captions(limit: int | None = None) -> pa.Table:
    """Table (key, caption) of WordNet definitions and examples, in file order, at most `limit` rows."""
    if not WORDNET_DIR.is_dir():
        raise click.ClickException(f"{WORDNET_DIR} not found: install the Debian package wordnet-base")
    keys: list[str] = []
    captions: list[str] = []
    for name, pos in _WORDNET_POS.items():
        with open(WORDNET_DIR / f"data.{name}", encoding="utf-8") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue  # licence header
                offset = line.split(" ", 1)[0]
                gloss = line.split(" | ", 1)[1].strip()
                definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
                texts = [definition] + _QUOTED.findall(gloss)
                for i, text in enumerate(texts):
                    keys.append(f"wn{pos}{offset}" if i == 0 else f"wn{pos}{offset}e{i}")
                    captions.append(text)
                if limit is not None and len(keys) >= limit:
                    return pa.table({"key": keys[:limit], "caption": captions[:limit]})
    return pa.table({"key": keys, "caption": captions})


def tuxpaint_stamps() -> list[tuple[Path, str | None, str]]:
    """(png path, caption or None, category) for every stamp, sorted by path."""
    if not TUXPAINT_DIR.is_dir():
        raise click.ClickException(f"{TUXPAINT_DIR} not found: install the Debian package tuxpaint-stamps-default")
    stamps = []
    for png in sorted(TUXPAINT_DIR.rglob("*.png")):
        txt = png.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8").splitlines()[0].strip() if txt.exists() else None
        stamps.append((png, caption, png.relative_to(TUXPAINT_DIR).parts[0]))
    return stamps


def write_tuxpaint_tars(out_dir: Path, per_tar: int = 100) -> list[Path]:
    """Write the stamps as img2dataset-style tars ``NNNNN.tar`` (KEY.png, KEY.txt, KEY.json) plus ``classnames.txt``.

    KEY = 5-digit tar number + 4-digit index, as img2dataset names them. KEY.json holds ``label`` (index into
    classnames.txt), ``category`` and the stamp's path. A stamp without a caption gets no KEY.txt.
    """
    stamps = tuxpaint_stamps()
    classnames = sorted({category for _, _, category in stamps})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classnames.txt").write_text("\n".join(classnames) + "\n", encoding="utf-8")
    tars = []
    for shard, start in enumerate(range(0, len(stamps), per_tar)):
        path = out_dir / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, (png, caption, category) in enumerate(stamps[start : start + per_tar]):
                key = f"{shard:05d}{i:04d}"
                meta = {"label": classnames.index(category), "category": category,
                        "path": str(png.relative_to(TUXPAINT_DIR))}
                members = {f"{key}.png": png.read_bytes(), f"{key}.json": json.dumps(meta).encode()}
                if caption is not None:
                    members[f"{key}.txt"] = caption.encode("utf-8")
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        tars.append(path)
    return tars


@click.group()
def main() -> None:
    """Write the offline sample corpora."""


@main.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--limit", type=int, default=None, help="Keep only the first N captions.")
def wordnet(out: Path, limit: int | None) -> None:
    """WordNet definitions and examples as a Parquet table (key, caption)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table = wordnet_captions(limit)
    pq.write_table(table, out)
    click.echo(f"wrote {table.num_rows} captions to {out}")


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-tar", type=int, default=100, show_default=True)
def tuxpaint(out_dir: Path, per_tar: int) -> None:
    """Tuxpaint stamps as img2dataset-style tars."""
    tars = write_tuxpaint_tars(out_dir, per_tar)
    click.echo(f"wrote {len(tars)} tars to {out_dir}")


if __name__ == "__main__":
    main()
