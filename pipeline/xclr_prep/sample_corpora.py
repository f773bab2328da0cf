"""Real corpora that work offline, built from Debian and npm packages (docs/design.md, Data and models that work
offline).

- WordNet (`wordnet-base`): every synset's definition and each quoted usage example, about 166k caption-like
  texts. Keys are ``wn{pos}{offset}`` for a definition and ``wn{pos}{offset}e{i}`` for its i-th example.
- Tuxpaint stamps (`tuxpaint-stamps-default`): about 800 PNG stamps; the caption is the first line of the
  ``.txt`` beside each PNG (a few have none), the label is the top-level category folder.
- Fashion-MNIST (`dataset-fashion-mnist`): 60k train + 10k test 28x28 grey images of 10 classes, for class-label
  mode (no captions: the caption is a template of the class name).
- Scene captions (`xclr_prep.scene_captions`): any number of unique caption-like texts composed from WordNet,
  each paired with a Fashion-MNIST image (cycled), for runs at CC3M-like sizes.
- Emoji of three vendors (npm `emoji-datasource-google`, `emoji-datasource-twitter` 16.0.0 and `openmoji` 17.0.0,
  unpacked into the venv by ``scripts/setup_env.sh``): about 1,900 emoji and 1,900 skin-tone variants per vendor.
  The caption is the emoji's name from emoji-datasource's ``emoji.json`` (lower case), the same text for every
  vendor and skin tone: one caption has one image per vendor and tone, and names carry graded similarity ("dog
  face" ~ "cat face"). The label is the subcategory (99), beside the category (10). With ``--captions name+tags``
  the caption is the name followed by the emoji's English tags from npm ``emojibase-data`` 17.0.0 ("dog face:
  adorbs, animal, dog, face, pet, puppies, puppy"), the study's richer-caption ablation.

Used by the README's main job, the tests and the benchmarks. Run as a module to write them to disk::

    python -m xclr_prep.sample_corpora wordnet OUT.parquet [--limit N]
    python -m xclr_prep.sample_corpora tuxpaint OUT_DIR [--per-tar 100]
    python -m xclr_prep.sample_corpora fashion-mnist OUT_DIR [--split train] [--limit N] [--per-tar 10000]
    python -m xclr_prep.sample_corpora scenes OUT_DIR --n 1000000 [--seed 0] [--per-tar 10000]
    python -m xclr_prep.sample_corpora emoji OUT_DIR [--vendor google ...] [--every N] [--per-tar 1000]
        [--captions name|name+tags]
"""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xclr_schemas.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, idx_files, read_idx

WORDNET_DIR = Path("/usr/share/wordnet")
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
EMOJI_DIR = Path(sys.prefix) / "share" / "xclr-emoji"  # where scripts/setup_env.sh unpacks the npm packages
EMOJI_VENDORS = ("google", "twitter", "openmoji")
EMOJI_SIZE = 64  # px; emoji-datasource ships 64 px PNGs, OpenMoji's SVGs are rendered at this size
EMOJI_TAGS = "emojibase-en.json"  # emojibase-data's en/data.json, unpacked beside emoji.json by setup_env.sh
EMOJI_CAPTIONS = ("name", "name+tags")
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


def write_scene_tars(out_dir: Path, n: int, seed: int = 0, per_tar: int = 10_000) -> list[Path]:
    """Write `n` scene captions (seeded) as img2dataset-style tars ``NNNNN.tar`` (KEY.png, KEY.txt); sample i
    gets Fashion-MNIST image i mod 70,000 (train, then test)."""
    from PIL import Image

    from xclr_prep.scene_captions import captions

    images = np.concatenate([fashion_mnist("train")[0], fashion_mnist("test")[0]])
    texts = captions(n, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs: dict[int, bytes] = {}
    tars = []
    for shard, start in enumerate(range(0, n, per_tar)):
        members = {}
        for i in range(start, min(n, start + per_tar)):
            image = i % len(images)
            if image not in pngs:
                buf = io.BytesIO()
                Image.fromarray(images[image]).save(buf, format="PNG")
                pngs[image] = buf.getvalue()
            key = f"{shard:05d}{i - start:0{len(str(per_tar - 1))}d}"
            members[f"{key}.png"] = pngs[image]
            members[f"{key}.txt"] = texts[i].encode("utf-8")
        tars.append(_write_tar(out_dir / f"{shard:05d}.tar", members))
    return tars


@dataclass(frozen=True)
class Emoji:
    """One image of the corpus: `unified` is its code point sequence (a skin-tone variant's own), `base` that of the
    emoji it varies, whose name is the caption."""

    unified: str
    non_qualified: str | None
    base: str
    caption: str
    subcategory: str
    category: str
    tagged: bool = False  # the caption carries emojibase's tags


def emoji_list(every: int = 1, source: Path = EMOJI_DIR, captions: str = "name") -> list[Emoji]:
    """Every `every`-th emoji of `source`/emoji.json (in its sort order), each followed by its skin-tone variants.
    Captions "name": the emoji's name, lower case; "name+tags": "NAME: TAG, TAG, ..." with the base emoji's tags in
    emojibase's order (found by code points, with or without the FE0F selector), the name alone where it has none."""
    meta = source / "emoji.json"
    if not meta.is_file():
        raise click.ClickException(f"{meta} not found: run scripts/setup_env.sh, which unpacks the npm packages "
                                   "emoji-datasource-google, emoji-datasource-twitter and openmoji there")
    tags = _emoji_tags(source) if captions == "name+tags" else {}
    entries = sorted(json.loads(meta.read_text(encoding="utf-8")), key=lambda e: e["sort_order"])[::every]
    emoji = []
    for e in entries:
        name = e["name"].lower()
        found = tags.get(e["unified"]) or tags.get(e["unified"].replace("-FE0F", ""))
        caption = f"{name}: {', '.join(found)}" if found else name
        variants = [e, *(e.get("skin_variations") or {}).values()]
        emoji += [Emoji(v["unified"], v.get("non_qualified"), e["unified"], caption, e["subcategory"],
                        e["category"], bool(found)) for v in variants]
    return emoji


def _emoji_tags(source: Path) -> dict[str, list[str]]:
    """{code points (emojibase's hexcode): tags}."""
    path = source / EMOJI_TAGS
    if not path.is_file():
        raise click.ClickException(f"{path} not found: run scripts/setup_env.sh, which unpacks npm emojibase-data "
                                   "there")
    return {e["hexcode"]: e["tags"] for e in json.loads(path.read_text(encoding="utf-8")) if e.get("tags")}


def emoji_image(vendor: str, emoji: Emoji, openmoji_svgs: set[str], source: Path = EMOJI_DIR) -> bytes | None:
    """The vendor's image of `emoji` as an RGB PNG on white, EMOJI_SIZE px square; None when the vendor has none.
    Raises ValueError when its file cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if vendor == "openmoji":
        import resvg_py

        name = next((c for c in (emoji.unified, emoji.non_qualified) if c in openmoji_svgs), None)
        if name is None:
            return None
        try:
            png = bytes(resvg_py.svg_to_bytes(svg_path=str(source / "openmoji" / f"{name}.svg"),
                                              width=EMOJI_SIZE, height=EMOJI_SIZE))
        except Exception as exc:  # resvg raises its own error types for an SVG it cannot parse
            raise ValueError(f"openmoji {name}.svg: {exc}") from None
    else:
        path = source / vendor / f"{emoji.unified.lower()}.png"
        if not path.is_file():
            return None
        png = path.read_bytes()
    try:
        image = Image.open(io.BytesIO(png))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{vendor} {emoji.unified}: {exc}") from None
    rgba = image.convert("RGBA")
    if rgba.size != (EMOJI_SIZE, EMOJI_SIZE):
        rgba = rgba.resize((EMOJI_SIZE, EMOJI_SIZE), Image.Resampling.LANCZOS)
    out = Image.new("RGB", rgba.size, "white")
    out.paste(rgba, mask=rgba.getchannel("A"))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def write_emoji_tars(out_dir: Path, vendors: tuple[str, ...] = EMOJI_VENDORS, every: int = 1,
                     per_tar: int = 1000, source: Path = EMOJI_DIR, captions: str = "name") -> dict[str, dict]:
    """Write each vendor's emoji as img2dataset-style tars ``OUT/VENDOR/NNNNN.tar`` (KEY.png, KEY.txt, KEY.json)
    with ``classnames.txt`` (the subcategories, sorted) in every vendor folder, and ``OUT/counts.json``.

    KEY = ``VENDOR-unified`` (lower case, dashes). KEY.json holds ``label`` (subcategory index), ``subcategory``,
    ``category``, ``vendor``, ``emoji`` (the base emoji's code points, shared by its skin tones and vendors) and
    ``unified``. An emoji the vendor does not draw is skipped as ``no_image``, a file that cannot be read as
    ``unreadable``; returns and writes {vendor: {"written": n, "skipped": {reason: n}, "tagged": n}} ("tagged":
    images whose caption carries tags, with `captions` "name+tags", see `emoji_list`). `source` holds emoji.json
    (and emojibase-en.json) and a folder of images per vendor, as setup_env.sh unpacks them.
    """
    emoji = emoji_list(every, source, captions)
    classnames = sorted({e.subcategory for e in emoji_list(1, source)})
    svgs = {p.stem for p in (source / "openmoji").glob("*.svg")} if "openmoji" in vendors else set()
    counts = {}
    for vendor in vendors:
        folder = out_dir / vendor
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "classnames.txt").write_text("\n".join(classnames) + "\n", encoding="utf-8")
        skipped: Counter = Counter()
        members: dict[str, bytes] = {}
        written = shard = tagged = 0
        for e in emoji:
            try:
                png = emoji_image(vendor, e, svgs, source)
            except ValueError:
                skipped["unreadable"] += 1
                continue
            if png is None:
                skipped["no_image"] += 1
                continue
            key = f"{vendor}-{e.unified.lower()}"
            meta = {"label": classnames.index(e.subcategory), "subcategory": e.subcategory, "category": e.category,
                    "vendor": vendor, "emoji": e.base, "unified": e.unified}
            members.update({f"{key}.png": png, f"{key}.txt": e.caption.encode("utf-8"),
                            f"{key}.json": json.dumps(meta).encode()})
            written += 1
            tagged += e.tagged
            if len(members) == 3 * per_tar:
                _write_tar(folder / f"{shard:05d}.tar", members)
                members, shard = {}, shard + 1
        if members:
            _write_tar(folder / f"{shard:05d}.tar", members)
        counts[vendor] = {"written": written, "skipped": dict(skipped), "tagged": tagged}
    (out_dir / "counts.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    return counts


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


@main.command("scenes")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", type=click.IntRange(min=1), required=True, help="Number of samples (each a unique caption).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--per-tar", type=click.IntRange(min=1), default=10_000, show_default=True)
def scenes_command(out_dir: Path, n: int, seed: int, per_tar: int) -> None:
    """Generated scene captions with Fashion-MNIST images as img2dataset-style tars."""
    tars = write_scene_tars(out_dir, n, seed, per_tar)
    click.echo(f"wrote {n} samples in {len(tars)} tars to {out_dir}")


@main.command("emoji")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--vendor", "vendors", type=click.Choice(EMOJI_VENDORS), multiple=True, default=EMOJI_VENDORS,
              show_default=True, help="Vendors to write, one folder each (repeat the option).")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Keep every N-th emoji (with its skin tones), the same ones for every vendor.")
@click.option("--per-tar", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--captions", type=click.Choice(EMOJI_CAPTIONS), default="name", show_default=True,
              help="The emoji's name, or its name followed by emojibase's tags (\"dog face: animal, dog, ...\").")
def emoji_command(out_dir: Path, vendors: tuple[str, ...], every: int, per_tar: int, captions: str) -> None:
    """Emoji of several vendors as img2dataset-style tars, one folder per vendor."""
    for vendor, count in write_emoji_tars(out_dir, vendors, every, per_tar, captions=captions).items():
        click.echo(f"{vendor}: wrote {count['written']} images to {out_dir / vendor}"
                   + (f" (skipped: {count['skipped']})" if count["skipped"] else ""))


if __name__ == "__main__":
    main()
