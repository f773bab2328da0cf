"""Streaming training batches from xclr shards (docs/design.md, Data contracts; Resume and fault rules), as small
webdataset stages:

    resampled shard draws -> unchanged? -> tar samples -> group shuffle -> [fast-forward] -> decode + two uint8 crops
        -> batches

The photometric half of the augmentation runs on the training device (`xclr_train.augment`).

Every (epoch, rank, DataLoader worker) draws shards with replacement from the whole list, seeded by
(seed, epoch, rank, worker): no rank or worker ever runs dry, however few shards there are, and an epoch (a
checkpoint interval of a fixed number of batches) replays exactly on resume. Whole neighbour groups are shuffled
(a buffer of `SHUFFLE_GROUPS` groups), then cut into batches, so an anchor meets its graph neighbours in its batch.
The shard draws and the shuffle read no image; a sample's crops are drawn from its own generator, seeded by the
stream's seed and the sample's place in the stream (`WorkerState`). So a stream can resume in the middle of an
epoch (a preempted run): the fast-forward stage drops the samples the worker had taken, undecoded, and the stream
goes on exactly as it would have.

Samples that cannot be used are skipped and counted by reason (`REASONS`); every batch carries its worker's
running counts and place (`Position`) so the trainer can report and checkpoint them. A worker that reads
`max(20, 2 * shards)` shards in a row without one usable sample raises `DataError` instead of spinning forever.
A shard whose size or version tag (`xclr_schemas.storage.stat_key`) is not the one it had when the run listed the
shards is never read: `InputChanged` (a run trains on one set of shards, not a mix of old and new).
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from xclr_schemas import MANIFEST, NEIGHBOR_DTYPE, SIZES, ShardsDirError, load_npy, read_shards_manifest, storage
from xclr_schemas.shards import EMBEDDING_SUFFIX, IMAGE_SUFFIXES, META_SUFFIX, NEIGHBORS_SUFFIX
from xclr_train.augment import RECIPES, crop_view, to_rgb
from xclr_train.errors import TrainError, first_line
from xclr_train.preemption import ignore_signals

REASONS = ("truncated_shard", "incomplete_sample", "undecodable_image", "bad_member")
SHUFFLE_GROUPS = 256


class DataError(TrainError):
    """Training data that cannot be used (the message is one line, for the user).

    One raised in a DataLoader worker reaches the trainer as torch re-raises it: this type built from "Caught
    DataError in DataLoader worker process N. Original Traceback ... xclr_train.data.DataError: MESSAGE"; it keeps
    MESSAGE, the traceback's last line less the type's name."""

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]
        super().__init__(message)


class InputChanged(DataError):
    """A shard that is not the one the run started with (or its checkpoint recorded)."""


@dataclass(frozen=True)
class ShardSet:
    urls: list[str]
    samples: int | None  # from sizes.json, when every shard is listed there
    manifest: dict | None  # the xclr shards manifest beside the tars, when there is one
    stamps: dict[str, tuple[int, str]]  # url -> (size, version tag: the mtime, or a store's ETag), when listed

    def changed(self, recorded: dict[str, tuple[int, str]]) -> list[str]:
        """The shards whose stamp differs from `recorded` (another run's or checkpoint's `stamps`): "NAME: then
        (size, tag), now (size, tag)", a shard that is in one list only included."""
        return [f"{storage.basename(url)}: then {recorded.get(url)}, now {self.stamps.get(url)}"
                for url in sorted(set(recorded) | set(self.stamps)) if recorded.get(url) != self.stamps.get(url)]


def find_shards(spec: str) -> ShardSet:
    """Shards from a directory (its sizes.json, else its *.tar), a sizes.json file, or a brace pattern; local
    paths or URLs (`xclr_schemas.storage`: a URL's shards are streamed, never copied)."""
    spec = str(spec).rstrip("/")
    if storage.is_dir(spec) or storage.basename(spec) == SIZES:
        root = spec if storage.basename(spec) != SIZES else storage.parent(spec)
        if storage.exists(storage.join(root, SIZES)):
            urls = [storage.join(root, name) for name in read_sizes(storage.join(root, SIZES))]
        elif storage.is_url(root):
            urls = storage.find_files(storage.join(root, "*.tar"))
        else:
            urls = sorted(str(p) for p in Path(root).glob("*.tar"))
    else:
        urls = wds.shardlists.expand_urls(spec)
        root = storage.parent(urls[0] if urls else spec)
    if not urls:
        raise DataError(f"no shards in {spec}")
    missing = [u for u in urls if not storage.is_file(u)]
    if missing:
        raise DataError(f"{len(missing)} of {len(urls)} shards do not exist, e.g. {missing[0]}")
    stamps = {u: storage.stat_key(u) for u in urls}
    sizes_file = storage.join(root, SIZES)
    sizes = read_sizes(sizes_file) if storage.exists(sizes_file) else {}
    names = [storage.basename(u) for u in urls]
    samples = sum(sizes[n] for n in names) if all(n in sizes for n in names) else None
    manifest = None
    if storage.exists(storage.join(root, MANIFEST)):
        try:
            manifest = read_shards_manifest(root)
        except ShardsDirError as exc:
            raise DataError(str(exc)) from None
    return ShardSet(urls, samples, manifest, stamps)


def read_sizes(path: str) -> dict[str, int]:
    """open_clip's sizes.json: a JSON object of shard file names (in the same directory) and their sample counts;
    DataError for anything else."""
    try:
        sizes = json.loads(storage.read_text(path))
    except ValueError as exc:  # not UTF-8, not JSON
        raise DataError(f"{path} is not JSON ({first_line(exc)})") from None
    if not isinstance(sizes, dict) or not all(
            "/" not in name and name not in ("", ".", "..") and type(count) is int and count >= 0
            for name, count in sizes.items()):
        raise DataError(f"{path} is not a sizes.json: a JSON object of shard file names in its directory and their "
                        "sample counts (whole numbers, 0 or more)")
    return sizes


def read_tar(url: str, skipped: Counter) -> Iterator[dict]:
    """The samples of one tar: {"__key__": key, suffix: bytes, ...} (key = member name up to its first dot).

    A tar that ends early (truncated or corrupt: a read error, or no end-of-archive blocks after its last member)
    counts `truncated_shard`; its last, possibly partial, sample is dropped and counted `incomplete_sample`.
    Member names are only split, never used as paths.
    """
    current: dict | None = None
    try:
        with storage.open_input(url) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, suffix = info.name.rpartition("/")[2].partition(".")
                data = tar.extractfile(info).read()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                current = current or {"__key__": key}
                current[suffix.lower()] = data
            # tarfile ends quietly at a cut header; a whole tar has its two zero end blocks there
            raw.seek(tar.offset)
            if raw.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
                raise tarfile.ReadError("no end-of-archive blocks")
    except (tarfile.TarError, EOFError, OSError):
        skipped["truncated_shard"] += 1
        if current is not None:
            skipped["incomplete_sample"] += 1
        return
    if current is not None:
        yield current


def resampled(urls: list[str], rng: random.Random) -> Callable[[], Iterator[str]]:
    """First stage: shards drawn with replacement, forever."""
    def draw() -> Iterator[str]:
        while True:
            yield rng.choice(urls)
    return draw


def unchanged(stamps: dict[str, tuple[int, str]]) -> Callable[[Iterator[str]], Iterator[str]]:
    """Shard urls, each checked as it is opened against its stamp when the run started (`ShardSet.stamps`):
    InputChanged for a shard rewritten, replaced, appended to or deleted since, so a run never trains on a mix."""
    def stage(urls: Iterator[str]) -> Iterator[str]:
        for url in urls:
            try:
                now = storage.stat_key(url)
            except FileNotFoundError:
                now = "gone"
            if now != stamps[url]:
                raise InputChanged(f"{url} changed while the run read it (size and version then {stamps[url]}, now "
                                   f"{now}): a run reads the shards it started with; put them back, or start a new "
                                   "run in another --out")
            yield url
    return stage


def tar_samples(skipped: Counter, shards: int) -> Callable[[Iterator[str]], Iterator[dict]]:
    """Shard urls -> raw samples, each tagged with the index of the shard read it came from."""
    def stage(urls: Iterator[str]) -> Iterator[dict]:
        barren = 0
        for read, url in enumerate(urls):
            produced = False
            for sample in read_tar(url, skipped):
                sample["__read__"] = read
                produced = True
                yield sample
            barren = 0 if produced else barren + 1
            if barren >= max(20, 2 * shards):
                raise DataError(f"{barren} shard reads in a row gave no sample (skipped so far: {dict(skipped)})")
    return stage


def group_shuffle(rng: random.Random,
                  buffer_groups: int = SHUFFLE_GROUPS) -> Callable[[Iterator[dict]], Iterator[dict]]:
    """Yield whole neighbour groups (consecutive samples of one shard read sharing KEY.json's "group") in random
    order from a buffer of `buffer_groups` groups. Samples without a group id are groups of one."""
    def group_of(sample: dict) -> tuple:
        try:
            group = json.loads(sample[META_SUFFIX]).get("group")
        except (KeyError, ValueError, AttributeError, RecursionError):
            group = None
        return (sample["__read__"], sample["__key__"] if group is None else group)

    def stage(samples: Iterator[dict]) -> Iterator[dict]:
        buffer: list[list[dict]] = []
        group: list[dict] = []
        current = None
        for sample in samples:
            gid = group_of(sample)
            if group and gid != current:
                buffer.append(group)
                group = []
                if len(buffer) >= buffer_groups:
                    i = rng.randrange(len(buffer))
                    buffer[i], buffer[-1] = buffer[-1], buffer[i]
                    yield from buffer.pop()
            current = gid
            group.append(sample)
        if group:
            buffer.append(group)
        rng.shuffle(buffer)
        for g in buffer:
            yield from g
    return stage


def decode_image(data: bytes, size: int | None = None) -> Image.Image | None:
    """The encoded image as RGB (transparency onto white), or None when it does not decode. Given a `size`, a JPEG
    is decoded at the smallest DCT scale that keeps both sides at least `size` (PIL's draft)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if size is not None and img.format == "JPEG":
                img.draft("RGB", (size, size))
            return to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


@dataclass(frozen=True)
class Position:
    """Where a DataLoader worker stands in its epoch's stream after a batch: the raw samples its decode stage has
    taken (used or skipped) and its skip counts, in `REASONS` order."""
    taken: int = 0
    skipped: tuple[int, ...] = (0,) * len(REASONS)


@dataclass
class WorkerState:
    """A worker's running place in its epoch's stream, shared by its stages. Sample number `taken` (counted from 0
    over the samples the decode stage takes) draws its crops from random.Random(f"{seed}/{taken}")."""
    seed: str
    taken: int = 0
    skipped: Counter = field(default_factory=Counter)

    def position(self) -> Position:
        return Position(self.taken, tuple(self.skipped[r] for r in REASONS))


@dataclass(frozen=True)
class Needs:
    """Which members every sample must have for the chosen loss, beyond the image and the caption id."""
    neighbors: bool = False
    embedding: bool = False
    labels: bool = False


@dataclass(frozen=True)
class Rows:
    """The lengths every sample's rows must have: its neighbour row (`k`, the graph's) and its caption embedding
    (`caption_dim`, the caption model's); None where the loss reads no such row."""
    k: int | None = None
    caption_dim: int | None = None


def fast_forward(start: Position, state: WorkerState) -> Callable[[Iterator[dict]], Iterator[dict]]:
    """Drop the first `start.taken` raw samples undecoded, then take up the counts at `start`: the stream from
    there on is the one a worker that had taken them would go on with."""
    def stage(samples: Iterator[dict]) -> Iterator[dict]:
        samples = iter(samples)
        for _ in range(start.taken):
            next(samples)
        state.taken = start.taken
        state.skipped.clear()
        state.skipped.update(dict(zip(REASONS, start.skipped)))
        yield from samples
    return stage


def decode(view: Callable[[Image.Image, random.Random], Tensor], image_size: int, needs: Needs, rows: Rows,
           state: WorkerState) -> Callable[[Iterator[dict]], Iterator[dict]]:
    """Raw sample -> {"view1", "view2": `view` of the image decoded for `image_size` (`decode_image`), twice, with
    the sample's own generator (`WorkerState`), "caption_id", and "label"/"nbr_id"/"nbr_sim"/"emb" as needed}. A
    bad member: a json without a needed "label" or whose caption id is not a whole number in [0, 2**63), a neighbour
    row of another dtype or length than `rows.k`, with ids below -1 (-1: none) or similarities of its ids that are
    not finite, an embedding that is not one finite row of `rows.caption_dim`: the sample is skipped and counted as
    such."""
    skipped = state.skipped

    def one(raw: dict, rng: random.Random) -> dict | None:
        image = next((raw[s] for s in IMAGE_SUFFIXES if s in raw), None)
        if image is None or META_SUFFIX not in raw or (needs.neighbors and NEIGHBORS_SUFFIX not in raw) \
                or (needs.embedding and EMBEDDING_SUFFIX not in raw):
            skipped["incomplete_sample"] += 1
            return None
        try:
            meta = json.loads(raw[META_SUFFIX])
            out = {"caption_id": _in_range(int(meta["caption_id"]), 0)}
            if needs.labels:
                out["label"] = _in_range(int(meta["label"]), -2**63)
            if needs.neighbors:
                nbr = load_npy(raw[NEIGHBORS_SUFFIX])
                if nbr.dtype != NEIGHBOR_DTYPE or nbr.shape != (rows.k,):
                    raise ValueError("neighbour row of another dtype or length")
                if (nbr["id"] < -1).any() or not np.isfinite(nbr["sim"][nbr["id"] >= 0]).all():
                    raise ValueError("neighbour ids below -1 (none) or similarities that are not finite")
                out["nbr_id"] = torch.from_numpy(nbr["id"].astype(np.int64))
                out["nbr_sim"] = torch.from_numpy(nbr["sim"].astype(np.float32))
            if needs.embedding:
                emb = load_npy(raw[EMBEDDING_SUFFIX]).astype(np.float32)
                if emb.shape != (rows.caption_dim,) or not np.isfinite(emb).all():
                    raise ValueError("a caption embedding that is not one row of caption_dim finite numbers")
                out["emb"] = torch.from_numpy(emb)
        except (ValueError, KeyError, TypeError, OSError, OverflowError, RecursionError):
            skipped["bad_member"] += 1
            return None
        rgb = decode_image(image, image_size)
        if rgb is None:
            skipped["undecodable_image"] += 1
            return None
        out["view1"], out["view2"] = view(rgb, rng), view(rgb, rng)
        return out

    def stage(samples: Iterator[dict]) -> Iterator[dict]:
        for raw in samples:
            rng = random.Random(f"{state.seed}/{state.taken}")
            state.taken += 1
            sample = one(raw, rng)
            if sample is not None:
                yield sample
    return stage


def _in_range(value: int, low: int) -> int:
    """`value` when low <= value < 2**63 (an int64), else ValueError."""
    if not low <= value < 2**63:
        raise ValueError(f"{value} is out of range")
    return value


def batches(batch_size: int, state: WorkerState, worker: int) -> Callable[[Iterator[dict]], Iterator[dict]]:
    """Samples -> batches of `batch_size` stacked tensors, plus "worker" and the worker's `Position` after the
    batch: "taken" and "skipped" (its running counts, in `REASONS` order)."""
    def stage(samples: Iterator[dict]) -> Iterator[dict]:
        pending: list[dict] = []
        for sample in samples:
            pending.append(sample)
            if len(pending) == batch_size:
                batch = {key: torch.stack([torch.as_tensor(s[key]) for s in pending]) for key in pending[0]}
                batch["skipped"] = torch.tensor([state.skipped[r] for r in REASONS])
                batch["taken"] = torch.tensor(state.taken)
                batch["worker"] = torch.tensor(worker)
                pending = []
                yield batch
    return stage


@dataclass(frozen=True)
class EpochStart:
    """Where a rank's stream starts an epoch: at its beginning (the default), or, resuming a preempted run, after
    `batches` batches with each worker at `positions[worker]`. DataLoader workers take turns in a fixed order, so
    the next batch is worker ``batches % workers``'s: loader worker w then plays worker (w + batches) % workers."""
    batches: int = 0
    positions: dict[int, Position] = field(default_factory=dict)


class ShardStream(IterableDataset):
    """Endless batches for one rank; set `epoch` (and `start`) before each `iter` (the module docstring gives the
    seeding)."""

    def __init__(self, shards: ShardSet, batch_size: int, image_size: int, augment: str, needs: Needs,
                 rows: Rows, seed: int, rank: int) -> None:
        super().__init__()
        self.shards, self.batch_size, self.image_size, self.augment = shards, batch_size, image_size, augment
        self.needs, self.rows, self.seed, self.rank = needs, rows, seed, rank
        self.epoch = 0
        self.start = EpochStart()

    def view(self, image: Image.Image, rng: random.Random) -> Tensor:
        """One training view of a decoded image, as the worker cuts it: `augment.crop_view` of --augment's recipe."""
        return crop_view(image, self.image_size, RECIPES[self.augment], rng)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        worker = ((info.id if info is not None else 0) + self.start.batches) % workers
        state = WorkerState(f"xclr/{self.seed}/{self.epoch}/{self.rank}/{worker}")
        rng = random.Random(state.seed)  # shard draws and shuffle
        return iter(wds.DataPipeline(
            resampled(self.shards.urls, rng),
            unchanged(self.shards.stamps),
            tar_samples(state.skipped, len(self.shards.urls)),
            group_shuffle(rng),
            fast_forward(self.start.positions.get(worker, Position()), state),
            decode(self.view, self.image_size, self.needs, self.rows, state),
            batches(self.batch_size, state, worker),
        ))


def first_sample(shards: ShardSet) -> dict:
    """The first sample of the first shard that has one (for checks before training starts)."""
    for url in shards.urls[:20]:
        for sample in read_tar(url, Counter()):
            return sample
    raise DataError(f"none of the first {min(20, len(shards.urls))} shards holds a sample, e.g. {shards.urls[0]}")


def make_loader(dataset: ShardStream, workers: int, pin_memory: bool) -> DataLoader:
    """Batches come ready from the workers (batch_size=None), in a fixed round-robin order. The workers ignore a
    scheduler's stop signals (`preemption.ignore_signals`); they do not hold the run directory's lock (a forked
    child closes its copy, `xclr_schemas.out_lock`)."""
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      prefetch_factor=4 if workers > 0 else None, worker_init_fn=ignore_signals)


def shut_down(batches: Iterator) -> None:
    """End the workers of a DataLoader iterator now, also when the epoch ends by an exception: its traceback would
    keep the iterator alive, and with it the workers, which ignore SIGTERM (`preemption.ignore_signals`), the signal
    with which Python's exit ends daemon processes, so the command would never exit. torch has no public close: this
    is what its iterator's __del__ calls (a process-local iterator has nothing to end)."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
