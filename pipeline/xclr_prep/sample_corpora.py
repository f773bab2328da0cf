"""Real corpora that work offline, built from Debian packages (shared/DESIGN.md section 8).

- WordNet (`wordnet-base`): every synset's definition and each quoted usage example, about 166k caption-like
  texts. Keys are ``wn{pos}{offset}`` for a definition and ``wn{pos}{offset}e{i}`` for its i-th example.
- Tuxpaint stamps (`tuxpaint-stamps-default`): about 800 PNG stamps; the caption is the first line of the
  ``.txt`` beside each PNG (a few have none), the label is the top-level category folder.
- Fashion-MNIST (`dataset-fashion-mnist`): 60k train + 10k test 28x28 grey images of 10 classes, for class-label
  mode (no captions: the caption is a template of the class name).

Used by the README's main job, the tests and the benchmarks. Run as a module to write them to disk::

    python -m xclr_prep.sample_corpora wordnet OUT.parquet [--limit N]
    python -m xclr_prep.sample_corpora tuxpaint OUT_DIR [--per-tar 100]
    python -m xclr_prep.sample_corpora fashion-mnist OUT_DIR [--split train] [--limit N] [--per-tar 10000]
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclr_schemas.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, idx_files, read_idx

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


def write_tuxpaint_tars(out_dir: Path, per_tar: int = 100, every: int = 1) -> list[Path]:
    """Write the stamps (every `every`-th in path order: a spread over all categories) as img2dataset-style tars
    ``NNNNN.tar`` (KEY.png, KEY.txt, KEY.json) plus ``classnames.txt``.

    KEY = 5-digit tar number + 4-digit index, as img2dataset names them. KEY.json holds ``label`` (index into
    classnames.txt), ``category`` and the stamp's path. A stamp without a caption gets no KEY.txt.
    """
    stamps = tuxpaint_stamps()
    classnames = sorted({category for _, _, category in stamps})
    stamps = stamps[::every]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classnames.txt").write_text("\n".join(classnames) + "\n", encoding="utf-8")
    tars = []
    for shard, start in enumerate(range(0, len(stamps), per_tar)):
        members = {}
        for i, (png, caption, category) in enumerate(stamps[start : start + per_tar]):
            key = f"{shard:05d}{i:04d}"
            meta = {"label": classnames.index(category), "category": category,
                    "path": str(png.relative_to(TUXPAINT_DIR))}
            members[f"{key}.png"] = png.read_bytes()
            members[f"{key}.json"] = json.dumps(meta).encode()
            if caption is not None:
                members[f"{key}.txt"] = caption.encode("utf-8")
        tars.append(_write_tar(out_dir / f"{shard:05d}.tar", members))
    return tars


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 28, 28), labels uint8 (n,)) of the Fashion-MNIST `split` (train | test)."""
    files = idx_files(FASHION_MNIST_DIR, split)
    if files is None:
        raise click.ClickException(f"{FASHION_MNIST_DIR} not found: install the Debian package dataset-fashion-mnist")
    return read_idx(*files)


def write_fashion_mnist_tars(out_dir: Path, split: str = "train", limit: int | None = None,
                             per_tar: int = 10_000) -> list[Path]:
    """Write Fashion-MNIST as img2dataset-style tars (KEY.png, KEY.json with ``label``) plus ``classnames.txt``,
    for class-label mode. KEY = 5-digit tar number + 4-digit index."""
    from PIL import Image

    images, labels = fashion_mnist(split)
    images, labels = images[:limit], labels[:limit]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classnames.txt").write_text("\n".join(FASHION_MNIST_CLASSES) + "\n", encoding="utf-8")
    tars = []
    for shard, start in enumerate(range(0, len(images), per_tar)):
        members = {}
        for i in range(start, min(len(images), start + per_tar)):
            buf = io.BytesIO()
            Image.fromarray(images[i]).save(buf, format="PNG")
            key = f"{shard:05d}{i - start:04d}"
            members[f"{key}.png"] = buf.getvalue()
            members[f"{key}.json"] = json.dumps({"label": int(labels[i])}).encode()
        tars.append(_write_tar(out_dir / f"{split}-{shard:05d}.tar", members))
    return tars


def _write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


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
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Keep every N-th stamp (e.g. 10 for a 10% subset across all categories).")
def tuxpaint(out_dir: Path, per_tar: int, every: int) -> None:
    """Tuxpaint stamps as img2dataset-style tars."""
    tars = write_tuxpaint_tars(out_dir, per_tar, every)
    click.echo(f"wrote {len(tars)} tars to {out_dir}")


@main.command("fashion-mnist")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--limit", type=int, default=None, help="Keep only the first N images.")
@click.option("--per-tar", type=int, default=10_000, show_default=True)
def fashion_mnist_command(out_dir: Path, split: str, limit: int | None, per_tar: int) -> None:
    """Fashion-MNIST as img2dataset-style tars for class-label mode."""
    tars = write_fashion_mnist_tars(out_dir, split, limit, per_tar)
    click.echo(f"wrote {len(tars)} tars to {out_dir}")


if __name__ == "__main__":
    main()
