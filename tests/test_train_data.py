"""The trainer's streaming stages on real tar files: shard lists, tar reading with counted skips, group shuffle,
decoding, and the per-(epoch, rank, worker) seeding that resume and DDP rely on."""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from data_helpers import write_tar
from PIL import Image

from xclr_schemas import NEIGHBOR_DTYPE, npy_bytes
from xclr_train.augment import MEAN, RECIPES, STD, crop_view, draw_photometric
from xclr_train.data import (
    DataError,
    EpochStart,
    Needs,
    Position,
    Rows,
    ShardStream,
    WorkerState,
    decode,
    find_shards,
    group_shuffle,
    make_loader,
    read_tar,
    tar_samples,
)
from xclr_train.photometric import photometric


def simclr_crops_8px(image, rng):
    """The decode stage's view: a SimCLR crop of 8 px."""
    return crop_view(image, 8, RECIPES["simclr"], rng)


def png(i: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (size, size), (i % 256, 0, 0, 128)).save(buf, format="PNG")
    return buf.getvalue()


def sample_members(key: str, caption: int, group: int, k: int = 3) -> list[tuple[str, bytes]]:
    nbr = np.zeros(k, dtype=NEIGHBOR_DTYPE)
    nbr["id"], nbr["sim"] = [caption + 1 + j for j in range(k)], [0.9 - 0.1 * j for j in range(k)]
    return [(f"{key}.png", png(caption)), (f"{key}.txt", b"a caption"),
            (f"{key}.json", json.dumps({"caption_id": caption, "group": group}).encode()),
            (f"{key}.nbr.npy", npy_bytes(nbr))]


def write_shards(root, shards: int = 3, groups: int = 4, per_group: int = 3) -> list[str]:
    root.mkdir(exist_ok=True)
    sizes = {}
    for s in range(shards):
        members = []
        for g in range(groups):
            for j in range(per_group):
                members += sample_members(f"s{s}g{g}m{j}", caption=100 * s + 10 * g + j, group=s * groups + g)
        write_tar(root / f"shard-{s:06d}.tar", members)
        sizes[f"shard-{s:06d}.tar"] = groups * per_group
    (root / "sizes.json").write_text(json.dumps(sizes))
    return [str(root / name) for name in sizes]


def test_find_shards_from_a_directory_sizes_json_and_a_brace_pattern(tmp_path):
    urls = write_shards(tmp_path / "d")
    for spec in (tmp_path / "d", tmp_path / "d" / "sizes.json", str(tmp_path / "d" / "shard-{000000..000002}.tar")):
        found = find_shards(str(spec))
        assert found.urls == urls and found.samples == 36 and found.manifest is None
    assert find_shards(str(tmp_path / "d" / "shard-{000000..000001}.tar")).samples == 24
    with pytest.raises(DataError, match="no shards in"):
        (tmp_path / "empty").mkdir()
        find_shards(str(tmp_path / "empty"))


def test_a_truncated_tar_keeps_whole_samples_and_counts_the_rest(tmp_path):
    [url] = write_shards(tmp_path / "d", shards=1, groups=2, per_group=3)
    data = open(url, "rb").read()
    open(url, "wb").write(data[: len(data) * 2 // 3])
    skipped = Counter()
    keys = [s["__key__"] for s in read_tar(url, skipped)]
    assert 0 < len(keys) < 6 and len(set(keys)) == len(keys)
    assert skipped == Counter(truncated_shard=1, incomplete_sample=1)


def test_group_shuffle_moves_whole_groups_and_loses_nothing(tmp_path):
    urls = write_shards(tmp_path / "d", shards=3, groups=5, per_group=3)
    skipped = Counter()
    raw = list(tar_samples(skipped, len(urls))(iter(urls)))
    out = list(group_shuffle(random.Random(1), buffer_groups=4)(iter(raw)))
    assert sorted(s["__key__"] for s in out) == sorted(s["__key__"] for s in raw)
    groups = [json.loads(s["json"])["group"] for s in out]
    runs = [g for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]]
    assert len(runs) == len(set(runs)) == 15  # every group arrives in one piece
    assert runs != sorted(runs)


def test_decode_skips_and_counts_bad_samples(tmp_path):
    good = dict(sample_members("a", 1, 0))
    raw = [{"__key__": "a", **{n.split(".", 1)[1]: d for n, d in good.items()}}]
    broken_image = dict(raw[0], png=b"not a png")
    bad_nbr = dict(raw[0], **{"nbr.npy": npy_bytes(np.zeros(5, dtype=NEIGHBOR_DTYPE))})
    no_json = {k: v for k, v in raw[0].items() if k != "json"}
    state = WorkerState("test")
    stage = decode(simclr_crops_8px, 8, Needs(True, False), Rows(k=3), state)
    out = list(stage(iter(raw + [broken_image, bad_nbr, no_json])))
    assert len(out) == 1 and out[0]["caption_id"] == 1
    assert out[0]["view1"].shape == (3, 8, 8) and out[0]["view1"].dtype == torch.uint8
    assert out[0]["nbr_id"].tolist() == [2, 3, 4]
    assert state.skipped == Counter(undecodable_image=1, bad_member=1, incomplete_sample=1)
    assert state.taken == 4  # used or skipped, every sample the stage took


def test_decode_with_labels_skips_and_counts_a_sample_without_one():
    raw = {"__key__": "a", **{n.split(".", 1)[1]: d for n, d in sample_members("a", 1, 0)}}
    labelled = dict(raw, json=json.dumps({"caption_id": 2, "label": 7}).encode())
    state = WorkerState("test")
    stage = decode(simclr_crops_8px, 8, Needs(False, False, labels=True), Rows(k=3), state)
    out = list(stage(iter([raw, labelled])))
    assert [(s["caption_id"], s["label"]) for s in out] == [(2, 7)]
    assert state.skipped == Counter(bad_member=1)


def take(stream: ShardStream, epoch: int, n: int) -> list[dict]:
    stream.epoch = epoch
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_crop_keeps_every_colour_and_simclr_changes_them():
    """On a two-colour image, every crop view holds only the two normalised colours (crop and flip move pixels,
    nothing recolours them); SimCLR's jitter and grayscale recolour most views."""
    image = Image.new("RGB", (32, 32), (200, 40, 10))
    image.paste((30, 90, 220), (0, 0, 16, 32))
    colours = {tuple(round((c / 255 - m) / s, 3) for c, m, s in zip(rgb, MEAN, STD))
               for rgb in ((200, 40, 10), (30, 90, 220))}
    rng = random.Random(0)

    def palette(view):  # the view's distinct colours, ignoring the few pixels antialiasing blends at the edge
        pixels = Counter(tuple(round(v, 3) for v in px) for px in view.reshape(3, -1).T.tolist())
        return {colour for colour, n in pixels.items() if n > 32}

    def views(recipe):  # both halves: the worker's crops, then the batched photometric ops
        crops = torch.stack([crop_view(image, 16, RECIPES[recipe], rng) for _ in range(50)])
        return photometric(crops, draw_photometric(50, RECIPES[recipe], torch.Generator()), RECIPES[recipe])

    crop = views("crop")
    assert all(palette(view) <= colours and palette(view) for view in crop)
    assert len({view.sum().item() for view in crop}) > 10  # the crops differ
    assert sum(not palette(view) <= colours for view in views("simclr")) > 25  # recoloured


def test_streams_are_seeded_by_epoch_and_rank(tmp_path):
    write_shards(tmp_path / "d", shards=2)
    shards = find_shards(str(tmp_path / "d"))

    def stream(rank):
        return ShardStream(shards, batch_size=4, image_size=8, augment="simclr", needs=Needs(True, False),
                           rows=Rows(k=3), seed=0, rank=rank)

    a, again = take(stream(0), 0, 3), take(stream(0), 0, 3)
    for x, y in zip(a, again):
        assert torch.equal(x["caption_id"], y["caption_id"]) and torch.equal(x["view1"], y["view1"])
    other_rank, other_epoch = take(stream(1), 0, 3), take(stream(0), 1, 3)
    ids = [torch.cat([b["caption_id"] for b in batches]).tolist() for batches in (a, other_rank, other_epoch)]
    assert ids[0] != ids[1] and ids[0] != ids[2]
    assert a[0]["skipped"].tolist() == [0, 0, 0, 0]


def test_a_stream_started_inside_an_epoch_goes_on_as_the_whole_one(tmp_path):
    """A rank's stream through a real DataLoader of two workers, started after 5 batches from the positions those
    batches carried, gives the whole stream's batches 6 to 9: the same samples, crops and skip counts (a bad image
    in every third sample of one shard makes the skips matter)."""
    write_shards(tmp_path / "d", shards=2)
    tar = tmp_path / "d" / "shard-000001.tar"
    with tarfile.open(tar) as inp:
        members = [(m.name, inp.extractfile(m).read()) for m in inp]
    write_tar(tar, [(n, b"not a png" if n.endswith("2.png") else d) for n, d in members])
    shards = find_shards(str(tmp_path / "d"))

    def batches(start: EpochStart, n: int) -> list[dict]:
        stream = ShardStream(shards, batch_size=3, image_size=8, augment="simclr", needs=Needs(True, False),
                             rows=Rows(k=3), seed=0, rank=0)
        stream.epoch, stream.start = 2, start
        it = iter(make_loader(stream, workers=2, pin_memory=False))
        return [next(it) for _ in range(n)]

    whole = batches(EpochStart(), 9)
    assert [int(b["worker"]) for b in whole] == [0, 1] * 4 + [0]
    positions = {int(b["worker"]): Position(int(b["taken"]), tuple(b["skipped"].tolist())) for b in whole[:5]}
    assert sum(whole[4]["skipped"].tolist()) + sum(whole[3]["skipped"].tolist()) > 0
    resumed = batches(EpochStart(5, positions), 4)
    assert [int(b["worker"]) for b in resumed] == [1, 0, 1, 0]
    for x, y in zip(whole[5:], resumed):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_shards_without_any_sample_raise_instead_of_spinning(tmp_path):
    (tmp_path / "d").mkdir()
    write_tar(tmp_path / "d" / "shard-000000.tar", [])
    with pytest.raises(DataError, match="shard reads in a row gave no sample"):
        next(iter(tar_samples(Counter(), 1)(iter([str(tmp_path / "d" / "shard-000000.tar")] * 100))))
