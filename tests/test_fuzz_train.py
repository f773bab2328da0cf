"""Hostile input fuzzed through every reader of `xclr-train` (tests/fuzz_inputs.py builds the cases,
tests/fuzz_harness.py runs them in one forked child with bounded memory and time): shard tars and their samples,
images as the trainer decodes them, a shards directory's sizes.json and manifest, and checkpoints. Every case must
end read, skipped and counted with its reason (data.REASONS), or refused with a one-line TrainError; a pickle
payload in a checkpoint must be refused without running. The fast lane runs a few cases of each family, the slow
lane (CI) the full count."""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzz_harness import SLOW_LANE_TARGET, Lane, fuzz_and_record, lanes
from fuzz_inputs import Damage, damages, image_cases, shard_cases, some_damage
from hypothesis import strategies as st

from xclr_schemas import SHARDS_SCHEMA_VERSION
from xclr_train.augment import RECIPES, crop_view
from xclr_train.checkpoint import load_checkpoint, read_checkpoint, read_encoder, save_checkpoint
from xclr_train.data import REASONS, Needs, Rows, WorkerState, batches, decode, decode_image, find_shards, read_tar
from xclr_train.errors import TrainError
from xclr_train.models import Encoder, ModelConfig

REFUSALS = (TrainError,)
# per family: (cases in the slow lane, the minimum its wall-clock cap may not cut, the cap in seconds)
FAMILIES = {"shard": (300, 200, 5), "train-image": (120, 80, 8), "shard-dir": (60, 40, 2), "checkpoint": (120, 80, 4)}
K = 3
CAPTION_DIM = 8  # the length of a good caption embedding (fuzz_inputs.EMB_ROWS)
IMAGE_SIZE = 8


def family_lanes(family: str) -> list:
    return lanes(*FAMILIES[family])


def view(image, rng):
    return crop_view(image, IMAGE_SIZE, RECIPES["simclr"], rng)


def usable(sample: dict) -> None:
    """What the targets and losses take from a decoded sample, as data.decode promises it: a caption id >= 0, a
    neighbour row of K ids >= -1 (-1: none) with finite similarities where there is an id, a finite embedding."""
    assert 0 <= sample["caption_id"] < 2**63, sample["caption_id"]
    if "nbr_id" in sample:
        ids, sims = sample["nbr_id"], sample["nbr_sim"]
        assert ids.shape == (K,) and bool((ids >= -1).all()), ids
        assert bool(torch.isfinite(sims[ids >= 0]).all()), sims
    if "emb" in sample:
        assert bool(torch.isfinite(sample["emb"]).all()), sample["emb"]


def feed_shard(case, work) -> str:
    """Read a hostile shard, decode its samples as the trainer does (once needing every member, once only the
    image and caption id) and stack them in batches of two."""
    path = work / "in" / "shard-000000.tar"
    path.write_bytes(case.tar().bytes())
    skipped = Counter()
    raw = list(read_tar(str(path), skipped))
    for needs in (Needs(neighbors=True, embedding=True, labels=True), Needs()):
        state = WorkerState("fuzz")
        samples = []
        for sample in decode(view, IMAGE_SIZE, needs, Rows(K, CAPTION_DIM), state)(iter(raw)):
            usable(sample)
            samples.append(sample)
        for batch in batches(2, state, 0)(iter(samples)):
            assert batch["view1"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert state.taken == len(raw) and len(samples) + sum(state.skipped.values()) == len(raw)
        assert set(state.skipped) <= set(REASONS), state.skipped
        skipped += state.skipped
    assert set(skipped) <= set(REASONS), skipped
    return "skipped" if skipped else "read"


def feed_train_image(case, work) -> str:
    data = case.bytes()
    (work / "in" / "image").write_bytes(data)
    image = decode_image(data, IMAGE_SIZE)
    if image is None:
        return "skipped"
    assert image.mode == "RGB"
    assert view(image, random.Random(0)).shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    return "read"


# ---------------------------------------------------------------- a shards directory's sizes.json and manifest


SIZES = {"good": {"shard-000000.tar": 2}, "list": [1, 2], "null": None, "string-count": {"shard-000000.tar": "2"},
         "float-count": {"shard-000000.tar": 2.5}, "dict-count": {"shard-000000.tar": {}},
         "traversal": {"../../../etc/passwd": 1}, "absolute": {"/etc/hostname": 1}, "missing-shard": {"nope.tar": 1},
         "empty": {}, "huge-count": {"shard-000000.tar": 10**30}}
MANIFESTS = {"good": {"schema_version": SHARDS_SCHEMA_VERSION}, "other-version": {"schema_version": "xclr.shards/0"},
             "list": [SHARDS_SCHEMA_VERSION], "null": None, "absent": "absent"}


@dataclass(frozen=True)
class ShardDirCase:
    sizes: str
    manifest: str
    damage: Damage = Damage()  # of sizes.json's text


def feed_shard_dir(case: ShardDirCase, work) -> str:
    root = work / "in" / "shards"
    root.mkdir()
    (root / "shard-000000.tar").write_bytes(bytes(1024))
    (root / "sizes.json").write_bytes(case.damage.apply(json.dumps(SIZES[case.sizes]).encode()))
    if case.manifest != "absent":
        (root / "manifest.json").write_text(json.dumps(MANIFESTS[case.manifest]))
    shards = find_shards(str(root))
    assert shards.urls and all(os.path.isfile(u) for u in shards.urls), shards.urls
    assert all(Path(u).resolve().is_relative_to(root.resolve()) for u in shards.urls), shards.urls
    assert shards.samples is None or isinstance(shards.samples, int), shards.samples
    return "read"


shard_dir_cases = st.builds(ShardDirCase, sizes=st.sampled_from(sorted(SIZES)),
                            manifest=st.sampled_from(sorted(MANIFESTS)), damage=damages)


# ---------------------------------------------------------------- checkpoints


CONFIG = {"arch": "convnet", "image_size": 16, "proj_hidden": 8, "proj_dim": 4, "patch_size": None}


class Payload:
    """Unpickling this runs `touch PATH`: what a hostile checkpoint would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _state(how: str, work) -> object:
    model = Encoder(ModelConfig(**CONFIG)).state_dict()
    good = {"model": model, "model_config": dict(CONFIG), "epoch": 1, "step": 2}
    first = next(iter(model))
    return {
        "good": good,
        "not-a-dict": [1, 2, 3],
        "a-tensor": torch.zeros(3),
        "no-model-config": {"model": model},
        "model-config-list": {**good, "model_config": [1, 2]},
        "model-config-string": {**good, "model_config": "convnet"},
        "model-config-extra-field": {**good, "model_config": {**CONFIG, "evil": 1}},
        "model-config-unknown-arch": {**good, "model_config": {**CONFIG, "arch": "no_such_net"}},
        "model-config-bad-size": {**good, "model_config": {**CONFIG, "image_size": -5}},
        "model-missing-keys": {**good, "model": {first: model[first]}},
        "model-wrong-shapes": {**good, "model": {k: torch.zeros(2) for k in model}},
        "model-not-tensors": {**good, "model": {k: "weights" for k in model}},
        "model-a-list": {**good, "model": [1, 2]},
        "pickle-payload": {**good, "evil": Payload(str(work / "pwned"))},
        "pickle-class": {**good, "namespace": argparse.Namespace(a=1)},
        "numpy-array": {**good, "array": np.zeros(3)},
    }[how]


CHECKPOINT_HOWS = ("good", "not-a-dict", "a-tensor", "no-model-config", "model-config-list", "model-config-string",
                   "model-config-extra-field", "model-config-unknown-arch", "model-config-bad-size",
                   "model-missing-keys", "model-wrong-shapes", "model-not-tensors", "model-a-list", "pickle-payload",
                   "pickle-class", "numpy-array", "raw-pickle-payload", "zip-of-junk", "text")


@dataclass(frozen=True)
class CheckpointCase:
    how: str
    damage: Damage = Damage()


def _raw_pickle(work) -> bytes:
    import pickle

    return pickle.dumps({"model_config": CONFIG, "evil": Payload(str(work / "pwned"))}, protocol=2)


def _zip_of_junk() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02junk")
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


def feed_checkpoint(case: CheckpointCase, work) -> str:
    path = work / "in" / "latest.pt"
    if case.how in ("raw-pickle-payload", "zip-of-junk", "text"):
        data = {"raw-pickle-payload": lambda: _raw_pickle(work), "zip-of-junk": _zip_of_junk,
                "text": lambda: b"not a checkpoint"}[case.how]()
        path.write_bytes(data)
    else:
        torch.save(_state(case.how, work), path)
    path.write_bytes(case.damage.apply(path.read_bytes()))
    try:
        state = read_checkpoint(path)
        load_checkpoint(path, CONFIG)
        read_encoder(path, state)
    finally:
        assert not (work / "pwned").exists(), "the checkpoint's pickle payload ran"
    return "read"


checkpoint_cases = st.builds(CheckpointCase, how=st.sampled_from(CHECKPOINT_HOWS),
                             damage=st.one_of(st.just(Damage()), some_damage))


def test_a_saved_checkpoint_is_read_back(tmp_path):
    """The checkpoint family's reference: a checkpoint as the trainer saves it reads back as "read"."""
    for sub in ("in", "out"):
        (tmp_path / sub).mkdir()
    save_checkpoint(tmp_path / "in" / "saved.pt", _state("good", tmp_path))
    state = read_checkpoint(tmp_path / "in" / "saved.pt")
    assert state["model_config"] == CONFIG and read_encoder(tmp_path / "in" / "saved.pt", state) is not None


STRATEGIES = {"shard": (shard_cases, feed_shard), "train-image": (image_cases, feed_train_image),
              "shard-dir": (shard_dir_cases, feed_shard_dir), "checkpoint": (checkpoint_cases, feed_checkpoint)}


def run_family(family: str, lane: Lane, tmp_path, fault_ledger) -> None:
    strategy, feed = STRATEGIES[family]
    fuzz_and_record(family, strategy, feed, REFUSALS, lane, tmp_path / "fuzz", fault_ledger)


@pytest.mark.parametrize("lane", family_lanes("shard"))
def test_fuzz_shards(lane, tmp_path, fault_ledger):
    run_family("shard", lane, tmp_path, fault_ledger)


@pytest.mark.parametrize("lane", family_lanes("train-image"))
def test_fuzz_train_images(lane, tmp_path, fault_ledger):
    run_family("train-image", lane, tmp_path, fault_ledger)


@pytest.mark.parametrize("lane", family_lanes("shard-dir"))
def test_fuzz_shard_directories(lane, tmp_path, fault_ledger):
    run_family("shard-dir", lane, tmp_path, fault_ledger)


@pytest.mark.parametrize("lane", family_lanes("checkpoint"))
def test_fuzz_checkpoints(lane, tmp_path, fault_ledger):
    run_family("checkpoint", lane, tmp_path, fault_ledger)


def test_the_slow_lane_fuzzes_its_target():
    """The slow lane's minimums (the cases no family's cap may cut) add up to SLOW_LANE_TARGET, so a slow lane that
    passes tried at least that many cases."""
    from test_fuzz_prep import FAMILIES as PREP_FAMILIES

    minimums = [minimum for _, minimum, _ in (*PREP_FAMILIES.values(), *FAMILIES.values())]
    assert sum(minimums) >= SLOW_LANE_TARGET, minimums


# ---------------------------------------------------------------- through the command line; regressions


def test_bad_input_through_the_command_line(tmp_path):
    """A shards manifest that is not JSON and a checkpoint carrying a pickle payload reach the user as xclr-train's
    one "Error:" line with exit status 2; the payload never runs."""
    from fuzz_inputs import SampleCase, ShardCase
    from train_helpers import train_in_process

    shards = tmp_path / "shards"
    shards.mkdir()
    good = SampleCase("s0", None, "good", "good", "good")
    (shards / "shard-000000.tar").write_bytes(ShardCase((good,)).tar().bytes())
    (shards / "manifest.json").write_text('{"schema_version": "xclr.shards/1", ')
    args = ("--data", shards, "--arch", "convnet", "--image-size", "16", "--batch-size", "2", "--steps", "1",
            "--workers", "0", "--no-progress", "--loss", "simclr")
    for extra, expected in ((("--out", tmp_path / "run1"), "is not a readable shards directory (JSONDecodeError"),
                            (("--out", tmp_path / "run2", "--resume", tmp_path / "evil.pt"),
                             "is not a readable xclr checkpoint")):
        if "--resume" in extra:
            (shards / "manifest.json").unlink()
            torch.save(_state("pickle-payload", tmp_path), tmp_path / "evil.pt")
        result = train_in_process(*args, *extra, check=False)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and lines[-1].startswith("Error: ") and expected in lines[-1], result.output
        assert not (tmp_path / "pwned").exists()


def test_an_npy_member_that_declares_more_than_it_holds_is_refused_before_allocating():
    """np.load allocated a member's declared shape first (terabytes for a 24-byte member: a MemoryError), and an empty
    member raised EOFError, which the decode stage does not count; both are now ValueError, a bad_member."""
    from fuzz_inputs import NBR_ROWS

    from xclr_schemas import load_npy

    for kind in ("huge-shape", "empty", "pickled", "not-npy"):
        with pytest.raises(ValueError):
            load_npy(NBR_ROWS[kind]())
    assert load_npy(NBR_ROWS["good"]()).shape == (K,)
