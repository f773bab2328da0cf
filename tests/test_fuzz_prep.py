"""Hostile input fuzzed through every reader of `xclr-prep` (tests/fuzz_inputs.py builds the cases,
tests/fuzz_harness.py runs them in one forked child with bounded memory and time): input tars, images, tables,
and the embed, graph and shards directories a later stage reads. Every case must end read, skipped and counted
with its reason, or refused with a one-line PrepError (or the directory readers' errors, which the stages turn into
one); nothing else, nothing written outside the output directory. The fast lane runs a few cases of each family,
the slow lane (CI) the full count."""

from __future__ import annotations

import io
import json
import multiprocessing
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import clustered, write_embed_dir
from fault_ledger import FaultLedger
from fuzz_harness import CASE_MEMORY, Lane, fuzz, fuzz_and_record, lanes
from fuzz_inputs import Damage, image_cases, some_damage, table_cases, tar_cases
from hypothesis import strategies as st
from PIL import Image
from prep_helpers import prep_error

from xclr_prep.corpus import CorpusSpec, InputFile, check_columns
from xclr_prep.errors import PrepError
from xclr_prep.images import check_image, locate_rows
from xclr_prep.scan import scan_file
from xclr_schemas import (
    GRAPH_SCHEMA_VERSION,
    NEIGHBOR_DTYPE,
    SAMPLES_SCHEMA,
    SHARDS_SCHEMA_VERSION,
    EmbedDirError,
    GraphDirError,
    ShardsDirError,
    load_embed_dir,
    load_graph,
    out_lock,
    read_shards_manifest,
    storage,
)
from xclr_schemas.shards import IMAGE_SUFFIXES

REFUSALS = (PrepError, EmbedDirError, GraphDirError, ShardsDirError)
# per family: (cases in the slow lane, the minimum its wall-clock cap may not cut, the cap in seconds)
FAMILIES = {"tar": (300, 200, 6), "image": (200, 140, 7), "table": (300, 200, 8), "dirs": (120, 80, 4)}
MAX_TOKENS = 16


def whitespace_tokens(texts: list[str]) -> list[int]:
    """A token count: words plus [CLS] and [SEP] (the scan only compares it with MAX_TOKENS)."""
    return [len(t.split()) + 2 for t in texts]


def scan_and_locate(file: InputFile, spec: CorpusSpec, work) -> str:
    """Scan `file` as `xclr-prep embed` does, then locate and check the kept rows' images as `xclr-prep graph` does;
    "skipped" when the file or any row or image was skipped. Checks input = kept + skipped."""
    out = work / "out"
    marker = scan_file(0, file, spec, out, 7, whitespace_tokens, MAX_TOKENS, "skip")
    kept = sum(p["rows"] for p in marker["parts"])
    assert marker["rows_in"] == kept + sum(marker["skipped"].values()), marker
    if marker["file_error"]:
        assert "\n" not in marker["file_error"] and kept == 0, marker
        return "skipped"
    tables = [pq.read_table(out / "scan" / p["name"]) for p in marker["parts"]]
    skipped = sum(marker["skipped"].values())
    if not tables:
        return "skipped" if skipped else "read"
    scanned = pa.concat_tables(tables)
    samples = pa.table({"key": scanned["key"], "caption_id": pa.array(np.arange(scanned.num_rows)),
                        **{c: scanned[c] for c in ("image_source", "image_member", "image_row", "label")}},
                       schema=SAMPLES_SCHEMA)
    located = locate_rows(samples, out / "stage", 0).to_pylist()
    images = [(row["blob"], row["offset"], row["size"]) for row in located if row["size"] >= 0]
    for blob, offset, size in images:
        assert offset + size <= storage.file_size(blob), (blob, offset, size)
    bad = sum(check_image(storage.read_range(*image)) is None for image in images)
    no_image = len(located) - len(images)
    return "skipped" if skipped or bad or no_image else "read"


def feed_tar(case, work) -> str:
    path = work / "in" / f"corpus{case.suffix}"
    path.write_bytes(case.bytes())
    return scan_and_locate(InputFile(str(path), "tar"), CorpusSpec(label_col="label"), work)


def feed_table(case, work) -> str:
    path = work / "in" / f"corpus.{case.fmt}"
    path.write_bytes(case.bytes())
    spec = CorpusSpec(image_col=case.image_col, label_col=case.label_col, classnames=case.classnames)
    file = InputFile(str(path), case.fmt)
    check_columns(file, spec)
    return scan_and_locate(file, spec, work)


def feed_image(case, work) -> str:
    """check_image, and its promise to the trainer: an image it passes decodes (docs/design.md: images are decoded
    once, while shards are written)."""
    data = case.bytes()
    (work / "in" / "image").write_bytes(data)
    suffix = check_image(data)
    assert suffix in (None, *IMAGE_SUFFIXES), suffix
    if suffix is None:
        return "skipped"
    with Image.open(io.BytesIO(data)) as img:
        img.convert("RGB")
    return "read"


# ---------------------------------------------------------------- the embed, graph and shards directories


@dataclass(frozen=True)
class DirCase:
    """A complete embed directory with its graph and shards manifest, one file of which is then made hostile:
    `how` replaces it (with another JSON value, an array of another shape or dtype, a pickle) or damages it."""
    file: str
    how: str
    damage: Damage = Damage()


DIR_FILES = ("embed/manifest.json", "embed/embeddings/part-00001.npy", "embed/captions/part-00000.parquet",
             "embed/samples/part-00001.parquet", "shards/graph/manifest.json", "shards/graph/neighbors.npy",
             "shards/manifest.json")
HOWS = ("damage", "delete", "empty", "json-list", "json-string", "json-null", "json-empty", "drop-a-key",
        "wrong-types", "npy-shape", "npy-dtype", "npy-pickled", "npy-fortran", "parquet-schema")


def _hostile(case: DirCase, path, original: bytes) -> None:
    how = case.how
    if how == "damage":
        path.write_bytes(case.damage.apply(original))
    elif how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how.startswith("json-"):
        path.write_text(json.dumps({"list": [1, 2], "string": "x", "null": None, "empty": {}}[how[5:]]))
    elif how in ("drop-a-key", "wrong-types") and path.suffix == ".json":
        manifest = json.loads(original)
        key = sorted(manifest)[int(case.damage.flips[0][0] * len(manifest)) % len(manifest)] \
            if case.damage.flips else "parts"
        if how == "drop-a-key":
            manifest.pop(key, None)
        else:
            manifest[key] = {"dict": "in place of a value"} if not isinstance(manifest.get(key), dict) else "text"
        path.write_text(json.dumps(manifest))
    elif how.startswith("npy-"):
        arrays = {"npy-shape": np.zeros((3, 2, 2), np.float16), "npy-dtype": np.zeros((6, 3), np.int8),
                  "npy-pickled": np.array([None, {"a": 1}], dtype=object),
                  "npy-fortran": np.asfortranarray(np.zeros((6, 3), NEIGHBOR_DTYPE))}
        np.save(path, arrays[how], allow_pickle=True)
    elif how == "parquet-schema":
        pq.write_table(pa.table({"caption_id": ["a", "b"], "text": [1, 2]}), path)
    else:
        path.write_bytes(case.damage.apply(original))


def write_dirs(root) -> None:
    """A small complete embed directory, a graph directory and a shards manifest."""
    write_embed_dir(root / "embed", clustered(12, 8, 2, 0.3), parts=2)
    graph = root / "shards" / "graph"
    graph.mkdir(parents=True)
    np.save(graph / "neighbors.npy", np.zeros((12, 3), NEIGHBOR_DTYPE))
    (graph / "manifest.json").write_text(json.dumps({"schema_version": GRAPH_SCHEMA_VERSION, "captions": 12, "k": 3}))
    (root / "shards" / "manifest.json").write_text(json.dumps({"schema_version": SHARDS_SCHEMA_VERSION,
                                                               "counts": {"written": 12}}))


def feed_dirs(case: DirCase, work) -> str:
    root = work / "in"
    write_dirs(root)
    path = root / case.file
    _hostile(case, path, path.read_bytes())
    loaded = load_embed_dir(root / "embed")
    assert len(loaded.embeddings) == len(loaded.captions) == loaded.manifest["counts"]["unique_captions"]
    graph = load_graph(root / "shards" / "graph")
    assert graph.neighbors.shape == (graph.manifest["captions"], graph.manifest["k"])
    read_shards_manifest(root / "shards")
    return "read"


dir_cases = st.builds(DirCase, file=st.sampled_from(DIR_FILES), how=st.sampled_from(HOWS),
                      damage=st.one_of(some_damage, st.just(Damage())))

STRATEGIES = {"tar": (tar_cases, feed_tar), "image": (image_cases, feed_image), "table": (table_cases(), feed_table),
              "dirs": (dir_cases, feed_dirs)}


def run_family(family: str, lane: Lane, tmp_path, fault_ledger) -> None:
    strategy, feed = STRATEGIES[family]
    fuzz_and_record(family, strategy, feed, REFUSALS, lane, tmp_path / "fuzz", fault_ledger)


@pytest.mark.parametrize("lane", lanes(*FAMILIES["tar"]))
def test_fuzz_input_tars(lane, tmp_path, fault_ledger):
    run_family("tar", lane, tmp_path, fault_ledger)


@pytest.mark.parametrize("lane", lanes(*FAMILIES["image"]))
def test_fuzz_images(lane, tmp_path, fault_ledger):
    run_family("image", lane, tmp_path, fault_ledger)


@pytest.mark.parametrize("lane", lanes(*FAMILIES["table"]))
def test_fuzz_tables(lane, tmp_path, fault_ledger):
    run_family("table", lane, tmp_path, fault_ledger)


@pytest.mark.parametrize("lane", lanes(*FAMILIES["dirs"]))
def test_fuzz_stage_directories(lane, tmp_path, fault_ledger):
    run_family("dirs", lane, tmp_path, fault_ledger)


# ---------------------------------------------------------------- what the fuzzers found, kept as regressions


def test_a_caption_member_over_the_bound_is_skipped_unread(tmp_path):
    """A KEY.txt that a compressed tar inflates to gigabytes was read whole (a MemoryError); now any KEY.txt or
    KEY.json over MAX_TEXT_BYTES is skipped as member_too_large without being read."""
    from data_helpers import write_tar

    from xclr_prep.corpus.tar import MAX_TEXT_BYTES

    write_tar(tmp_path / "t.tar", [("a.txt", b"w " * MAX_TEXT_BYTES), ("b.txt", b"fine"),
                                   ("c.txt", b"ok"), ("c.json", b"{" * (MAX_TEXT_BYTES + 1))])
    marker = scan_file(0, InputFile(str(tmp_path / "t.tar"), "tar"), CorpusSpec(label_col="label"), tmp_path / "out",
                       10, whitespace_tokens, MAX_TOKENS, "truncate")
    assert marker["skipped"] == {"member_too_large": 2} and marker["rows_in"] == 3
    assert pq.read_table(tmp_path / "out" / "scan" / marker["parts"][0]["name"])["key"].to_pylist() == ["b"]


def test_a_png_with_valid_crcs_over_too_little_data_is_undecodable():
    """verify() checks CRCs only: a PNG whose header declares more pixels than its (valid-CRC) data holds passed,
    and the trainer then failed to decode it (after allocating the declared size)."""
    from fuzz_inputs import image_bytes

    assert check_image(image_bytes("png-short-data")) is None and check_image(image_bytes("png-long-data")) is None
    assert check_image(image_bytes("bomb-png-12k")) is None  # in PIL's warning range: refused as a bomb
    assert check_image(image_bytes("png-interlaced")) == check_image(image_bytes("png-I;16")) == "png"


def test_bad_input_through_the_command_line(tmp_path):
    """The readers' errors reach the user as the command's one line with exit status 2 (prep_error checks both),
    nothing written but the output lock the command takes first."""
    csv = tmp_path / "c.csv"
    csv.write_bytes(b"\x0b,caption\nk1,a caption\n")  # a vertical tab is a line break to str.splitlines
    assert "has no column 'key' (columns: '\\x0b', 'caption')" in prep_error("embed", csv, "--out", tmp_path / "e")
    write_dirs(tmp_path / "d")
    embed = tmp_path / "d" / "embed"
    (embed / "manifest.json").write_text('{"schema_version": "xclr.embed/1", "parts": [')
    assert "is not a readable embed directory (JSONDecodeError" in prep_error("graph", embed, "--out", tmp_path / "g")
    write_dirs(tmp_path / "d2")
    np.save(tmp_path / "d2" / "embed" / "embeddings" / "part-00001.npy", np.array([None], dtype=object),
            allow_pickle=True)
    error = prep_error("graph", tmp_path / "d2" / "embed", "--out", tmp_path / "g")
    assert "is not a readable embed directory (ValueError: " in error
    for out in (tmp_path / "e", tmp_path / "g"):  # nothing but the command's output lock
        assert not out.exists() or [p.name for p in out.iterdir()] == [out_lock.LOCK], list(out.iterdir())


def test_labels_that_int64_cannot_hold_or_int_cannot_read_are_invalid_rows(tmp_path):
    """A label over int64 crashed the scan (OverflowError writing the part); a label "²" (a digit to str.isdigit,
    not to int) skipped the whole file. Both are now one row's label_invalid."""
    lines = [{"key": "a", "caption": "x", "label": 10**30}, {"key": "b", "caption": "y", "label": "\u00b2"},
             {"key": "c", "caption": "z", "label": "\u0663"}]  # Arabic-Indic three: a decimal, read as 3
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "[" * 100_000 + "]" * 100_000 + "\n")
    marker = scan_file(0, InputFile(str(path), "jsonl"), CorpusSpec(label_col="label"), tmp_path / "out", 10,
                       whitespace_tokens, MAX_TOKENS, "truncate")
    assert marker["file_error"] is None and marker["skipped"] == {"label_invalid": 2, "line_invalid": 1}
    assert pq.read_table(tmp_path / "out" / "scan" / marker["parts"][0]["name"])["label"].to_pylist() == [3]


KEPT: list[bytes] = []  # what the "keep-" cases hold on to, in the fuzz child


def misbehave(case: str, work) -> str:
    """A reader that does what the harness must catch, by name."""
    if case == "traceback":
        raise KeyError("not one of the refusals")
    if case == "many-lines":
        raise PrepError("one\ntwo")
    if case == "hang":
        time.sleep(30)
    if case == "memory":
        bytearray(2 * CASE_MEMORY)
    if case in ("hang-caught", "memory-caught"):  # as a reader that catches Exception does
        try:
            misbehave(case.removesuffix("-caught"), work)
        except Exception as exc:  # noqa: BLE001
            raise PrepError(f"could not read: {exc!r}") from exc
    if case == "outside":
        (work / "stray.txt").write_text("written beside the output directory")
    if case == "escape":
        (work / "out" / ".." / ".." / "escaped.txt").write_text("written through ../../")
    if case == "temporary":
        tempfile.mkstemp()
    if case == "refused":
        raise PrepError("a one-line error")
    if case == "linger":  # a thread the child's exit waits for
        threading.Thread(target=time.sleep, args=(3600,)).start()
    if case.startswith("keep-"):  # each within the bound, together over it: a case is judged by its own growth
        KEPT.append(b"k" * (CASE_MEMORY * 3 // 5))
    return "read"


def test_the_harness_fails_what_it_should(tmp_path):
    """A traceback, an error of many lines, a hang, too much memory (also when a reader turns the hang or the
    MemoryError into its one-line error) and a file outside the output directory (beside it, through ../../, or a
    temporary file left behind) fail; a one-line error is refused; cases that each grow within the bound pass,
    however much earlier cases grew; a child that does not exit after its cases is killed."""
    kinds = ("traceback", "many-lines", "hang", "memory", "hang-caught", "memory-caught", "outside", "escape",
             "temporary", "refused", "read", "keep-1", "keep-2", "linger")
    result = fuzz("self-test", st.sampled_from(kinds), misbehave, REFUSALS, Lane(30, 0, 0, 60), tmp_path,
                  case_seconds=2)  # room for keep-N's allocation on a loaded machine (0.5 s killed it once)
    assert dict(result.outcomes) == {"failed": 9, "refused": 1, "read": 4}, result
    assert not multiprocessing.active_children()
    reasons = "\n".join(result.failures)
    for expected in ("KeyError", "error of many lines", "hang: over 2 s", "memory:", "did not exit", "stray.txt",
                     "/escaped.txt", "self-test/tmp/tmp",
                     "memory: an allocation over the case's bound, then refused as PrepError"):
        assert expected in reasons, reasons


def test_the_harness_runs_a_lanes_minimum_and_fails_on_any_failure(tmp_path):
    """A cap that has run out still lets a lane run its minimum, and the ledger names the family it cut; one failed
    case fails the test."""
    ledger = FaultLedger()
    fuzz_and_record("capped", st.integers(), lambda case, work: "read", REFUSALS, Lane(50, 0, 5, 0), tmp_path,
                    ledger)
    assert ledger.fuzz == {"read": 5} and ledger.capped == ["capped"]
    with pytest.raises(AssertionError):
        fuzz_and_record("one-fails", st.sampled_from(("traceback", "read")), misbehave, REFUSALS,
                        Lane(10, 0, 0, 60), tmp_path, ledger)
