"""The emoji corpus: the real npm packages that setup_env.sh unpacks, written as img2dataset tars, and embedded."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import defaultdict

import pytest
from PIL import Image

from xclr_prep.sample_corpora import EMOJI_DIR, EMOJI_SIZE, EMOJI_TAGS, emoji_list, write_emoji_tars


def read_vendor(folder) -> dict[str, dict[str, bytes]]:
    """{key: {suffix: bytes}} of every tar in a vendor folder."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                key, suffix = member.name.split(".", 1)
                samples[key][suffix] = tar.extractfile(member).read()
    return samples


def test_every_vendor_draws_every_emoji_with_one_caption_per_code_point(tmp_path):
    emoji = emoji_list(every=40)
    assert len({e.base for e in emoji}) == 48 and len(emoji) > 48  # skin-tone variants follow their emoji
    counts = write_emoji_tars(tmp_path, every=40, per_tar=50)
    assert json.loads((tmp_path / "counts.json").read_text()) == counts
    captions = defaultdict(set)
    white_corner = []
    for vendor in ("google", "twitter", "openmoji"):
        assert counts[vendor] == {"written": len(emoji), "skipped": {}, "tagged": 0}
        samples = read_vendor(tmp_path / vendor)
        assert len(samples) == len(emoji) and len(list((tmp_path / vendor).glob("*.tar"))) == -(-len(emoji) // 50)
        classnames = (tmp_path / vendor / "classnames.txt").read_text().splitlines()
        for key, sample in samples.items():
            assert set(sample) == {"png", "txt", "json"} and key.startswith(f"{vendor}-") and "." not in key
            meta = json.loads(sample["json"])
            assert classnames[meta["label"]] == meta["subcategory"] and meta["vendor"] == vendor
            assert key == f"{vendor}-{meta['unified'].lower()}"
            captions[meta["emoji"]].add(sample["txt"].decode())
            image = Image.open(io.BytesIO(sample["png"]))
            assert image.mode == "RGB" and image.size == (EMOJI_SIZE, EMOJI_SIZE)
            white_corner.append(image.getpixel((0, 0)) == (255, 255, 255))
    assert sum(white_corner) > 0.8 * len(white_corner)  # the transparent surround became white
    assert all(len(texts) == 1 for texts in captions.values())  # identical across vendors and skin tones
    assert len(captions) == 48


def test_tagged_captions_join_the_name_and_emojibases_tags_and_are_shared_by_vendors_and_skin_tones(tmp_path):
    tags = {e["hexcode"]: e.get("tags", []) for e in json.loads((EMOJI_DIR / EMOJI_TAGS).read_text())}
    emoji = {e.unified: e for e in emoji_list(captions="name+tags")}
    assert emoji["1F436"].caption == "dog face: " + ", ".join(tags["1F436"]) and "puppy" in tags["1F436"]
    assert emoji["1F69A"].caption == "delivery truck: car, delivery, drive, truck, vehicle"
    assert emoji["00A9-FE0F"].caption == "copyright sign: " + ", ".join(tags["00A9"])  # found without FE0F
    wave_tone = next(e for e in emoji.values() if e.base == "1F44B" and e.unified != "1F44B")
    assert wave_tone.caption == emoji["1F44B"].caption == "waving hand sign: " + ", ".join(tags["1F44B"])
    assert all(e.tagged for e in emoji.values())  # emojibase 17 tags every emoji of emoji-datasource 16
    counts = write_emoji_tars(tmp_path, ("twitter",), every=40, per_tar=50, captions="name+tags")
    texts = {s["txt"].decode() for s in read_vendor(tmp_path / "twitter").values()}
    assert counts["twitter"]["tagged"] == sum(e.tagged for e in emoji_list(every=40, captions="name+tags"))
    assert texts == {e.caption for e in emoji_list(every=40, captions="name+tags")}


def test_missing_and_unreadable_images_are_skipped_and_counted(tmp_path):
    source = tmp_path / "source"
    entries = json.loads((EMOJI_DIR / "emoji.json").read_text())
    chosen = [e for e in entries if e["name"].lower() in ("dog face", "cat face", "automobile", "rowboat")]
    (source / "google").mkdir(parents=True)
    (source / "openmoji").mkdir()
    (source / "emoji.json").write_text(json.dumps(chosen))
    for e in chosen:
        for variant in [e, *(e.get("skin_variations") or {}).values()]:
            shutil.copy(EMOJI_DIR / "google" / f"{variant['unified'].lower()}.png", source / "google")
    dog, car = (next(e for e in chosen if e["name"].lower() == n) for n in ("dog face", "automobile"))
    (source / "google" / f"{dog['unified'].lower()}.png").unlink()
    (source / "google" / f"{car['unified'].lower()}.png").write_bytes(b"not a png")
    shutil.copy(EMOJI_DIR / "openmoji" / f"{dog['unified']}.svg", source / "openmoji")
    (source / "openmoji" / f"{car['unified']}.svg").write_text("<svg <broken")
    images = len(emoji_list(source=source))
    counts = write_emoji_tars(tmp_path / "out", ("google", "openmoji"), source=source)
    assert counts["google"] == {"written": images - 2, "skipped": {"no_image": 1, "unreadable": 1}, "tagged": 0}
    assert counts["openmoji"] == {"written": 1, "skipped": {"no_image": images - 2, "unreadable": 1}, "tagged": 0}
    written = {json.loads(s["json"])["emoji"] for s in read_vendor(tmp_path / "out" / "openmoji").values()}
    assert written == {dog["unified"]}


@pytest.mark.slow
def test_the_corpus_flows_through_embed_with_exact_counts(tmp_path, prep):
    from xclr_schemas import load_embed_dir

    counts = write_emoji_tars(tmp_path / "tars", ("google", "twitter"), every=60)
    prep("embed", tmp_path / "tars" / "google", tmp_path / "tars" / "twitter", "--out", tmp_path / "embed",
         "--label-col", "label", "--no-progress")
    loaded = load_embed_dir(tmp_path / "embed")
    counts_in = loaded.manifest["counts"]
    assert counts_in["kept"] == counts["google"]["written"] + counts["twitter"]["written"]
    assert counts_in["skipped_total"] == 0
    assert sorted(loaded.captions) == sorted({e.caption for e in emoji_list(every=60)})
    caption_of = dict(zip(loaded.caption_ids.tolist(), loaded.captions))
    by_key = dict(zip(loaded.samples["key"].to_pylist(), loaded.samples["caption_id"].to_pylist()))
    for e in emoji_list(every=60):  # one caption id for the google and the twitter image of an emoji
        assert by_key[f"google-{e.unified.lower()}"] == by_key[f"twitter-{e.unified.lower()}"]
        assert caption_of[by_key[f"google-{e.unified.lower()}"]] == e.caption
