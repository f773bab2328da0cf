"""`xclr-prep embed` end to end: real Ray (the session's, conftest.shared_ray), real model, real files; real corpora
where installed."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from data_helpers import cosine_rows, write_tar
from prep_helpers import prep_error, run_prep
from sentence_transformers import SentenceTransformer

from xclr_prep.captions import normalise
from xclr_prep.sample_corpora import tuxpaint_stamps
from xclr_schemas import load_embed_dir
from xclr_schemas.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, idx_files, read_idx
from xclr_schemas.out_lock import LOCK

FAST = ["--no-progress", "--batch-size", "64"]


def last_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[-1]


@pytest.mark.slow
def test_wordnet_corpus_in_three_formats(tmp_path, wordnet, model_path):
    """Embeddings equal a direct encode; dedup and duplicate keys are exact; the reader contract holds."""
    rows = wordnet.slice(0, 1200).to_pylist()
    # 60 repeated captions under new keys (some with other whitespace), 10 repeated keys
    rows += [{"key": f"again{i}", "caption": " " + r["caption"] + "\n"} for i, r in enumerate(rows[:60])]
    rows += [{"key": r["key"], "caption": "a caption under a key already used"} for r in rows[100:110]]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:500]), corpus / "a.parquet")
    pacsv.write_csv(pa.Table.from_pylist(rows[500:900]), corpus / "b.csv")
    (corpus / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[900:]))

    out = tmp_path / "out"
    run_prep("embed", corpus, "--out", out, "--part-size", "256", "--dtype", "float32", *FAST)
    d = load_embed_dir(out)

    kept = rows[:-10]
    unique = list(dict.fromkeys(normalise(r["caption"]) for r in kept))
    counts = d.manifest["counts"]
    assert counts["input_rows"] == len(rows) and counts["kept"] == len(kept)
    assert counts["skipped"] == {"duplicate_key": 10} and counts["unique_captions"] == len(unique)
    assert d.captions == unique
    assert d.caption_ids.tolist() == list(range(len(unique)))
    assert d.embeddings.shape == (len(unique), 384) and d.embeddings.flags.c_contiguous
    assert d.samples.column("key").to_pylist() == [r["key"] for r in kept]
    assert [d.captions[i] for i in d.samples.column("caption_id").to_pylist()] == [normalise(r["caption"])
                                                                                 for r in kept]
    direct = SentenceTransformer(model_path, device="cpu").encode(unique)
    assert cosine_rows(d.embeddings, direct).min() >= 0.999

    again = run_prep("embed", corpus, "--out", out, "--part-size", "256", "--dtype", "float32", *FAST)
    assert "already complete" in again.stdout
    other = run_prep("embed", corpus, "--out", out, "--dtype", "float16", *FAST, check=False)
    assert other.returncode == 2 and "other inputs or options" in last_line(other)



@pytest.mark.slow
def test_bad_input_is_skipped_and_counted(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = [{"key": f"g{i}", "caption": f"a photo of thing number {i}"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(good), corpus / "a.parquet")
    bad = [{"key": "b1", "caption": ""}, {"key": "b2", "caption": "   "}, {"key": "b.3", "caption": "dot"},
           {"key": "g0", "caption": "duplicate of a key in a.parquet"},
           {"key": "b4", "caption": " ".join(["long"] * 400)}, {"key": "b5", "caption": "fine"}]
    body = "".join(json.dumps(r) + "\n" for r in bad).encode() + b'{"key": "b6", "caption": "\xff"}\n'
    (corpus / "b.jsonl").write_bytes(body)
    write_tar(corpus / "c.tar", [(f"t{i}.txt", f"tar caption {i}".encode()) for i in range(100)])
    data = (corpus / "c.tar").read_bytes()
    (corpus / "c.tar").write_bytes(data[: len(data) // 2])  # truncated
    (corpus / "d.parquet").write_bytes(b"not a parquet file")

    out = tmp_path / "out"
    proc = run_prep("embed", corpus, "--out", out, *FAST)
    m = load_embed_dir(out).manifest
    c = m["counts"]
    assert c["skipped"] == {"caption_empty": 2, "key_has_dot": 1, "duplicate_key": 1, "line_not_utf8": 1}
    assert c["kept"] == 32 and c["truncated"] == 1
    assert c["input_rows"] == c["kept"] + c["skipped_total"] == 37
    assert c["files_skipped"] == 2
    assert sorted(f["path"].rsplit("/", 1)[1] for f in m["skipped_files"]) == ["c.tar", "d.parquet"]
    assert "2 files unreadable" in proc.stdout


@pytest.mark.parametrize(
    ("corpus", "args", "message"),
    [
        ("t.parquet", ["--caption-col", "text"], "has no column 'text'"),
        ("t.parquet", ["--model", "/nonexistent/model"], "model path does not exist: /nonexistent/model"),
        ("none-*.parquet", [], "no input files match"),
    ],
)
def test_clear_one_line_errors_before_ray(tmp_path, corpus, args, message):
    pq.write_table(pa.table({"key": ["a"], "caption": ["c"]}), tmp_path / "t.parquet")
    assert message in prep_error("embed", tmp_path / corpus, "--out", tmp_path / "out", *args, *FAST)
    out = tmp_path / "out"  # absent, or holding the command's lock and nothing of a run
    assert not out.exists() or [p.name for p in out.iterdir()] == [LOCK]


@pytest.mark.slow
def test_a_model_that_cannot_load_and_an_empty_corpus_are_one_line_errors(tmp_path):
    """Both are found once Ray runs (the model loads in the actors; emptiness shows after the scan): real commands."""
    pq.write_table(pa.table({"key": ["a"], "caption": ["c"]}), tmp_path / "t.parquet")
    proc = run_prep("embed", tmp_path / "t.parquet", "--out", tmp_path / "out", "--model",
                    "nobody/no-such-model-offline", *FAST, check=False)
    assert proc.returncode == 2
    assert "cannot load model 'nobody/no-such-model-offline'" in last_line(proc)
    assert last_line(proc).startswith("xclr-prep: error:")
    (tmp_path / "blank.jsonl").write_text('{"key": "a", "caption": " "}\n{"key": "b", "caption": ""}\n')
    proc = run_prep("embed", tmp_path / "blank.jsonl", "--out", tmp_path / "o2", *FAST, check=False)
    assert proc.returncode == 2
    assert "nothing to embed: 2 input rows, all skipped (caption_empty: 2)" in last_line(proc)


@pytest.mark.slow
def test_class_label_mode_on_fashion_mnist(fashion_embed, model_path):
    """A Parquet table's --label-col with --classnames and --template: one caption a class, in order of first
    appearance; each sample keeps its label and points at its class's caption."""
    labels = read_idx(*idx_files(FASHION_MNIST_DIR, "train"))[1][:1000].tolist()
    d = load_embed_dir(fashion_embed / "embed")
    order = list(dict.fromkeys(labels))
    assert d.captions == [f"a photo of a {FASHION_MNIST_CLASSES[i]}" for i in order]
    assert d.samples.column("label").to_pylist() == labels
    assert [d.captions[i] for i in d.samples.column("caption_id").to_pylist()] == [
        f"a photo of a {FASHION_MNIST_CLASSES[i]}" for i in labels]
    assert d.manifest["classnames"] == list(FASHION_MNIST_CLASSES)
    direct = SentenceTransformer(model_path, device="cpu").encode(d.captions)
    assert cosine_rows(d.embeddings, direct).min() >= 0.999


def test_tuxpaint_stamp_tars(tux_embed):
    """The session's embed of the tuxpaint stamp tars (conftest.tux_embed: --label-col label) counts every stamp."""
    stamps = tuxpaint_stamps()
    d = load_embed_dir(tux_embed / "embed")
    with_caption = [s for s in stamps if s[1] is not None]
    c = d.manifest["counts"]
    assert c["input_rows"] == len(stamps) and c["kept"] == len(with_caption)
    assert c["skipped"] == {"caption_missing": len(stamps) - len(with_caption)}
    assert c["unique_captions"] == len({normalise(s[1]) for s in with_caption})
    classnames = sorted({s[2] for s in stamps})
    assert d.samples.column("label").to_pylist() == [classnames.index(s[2]) for s in with_caption]
    members = d.samples.column("image_member").to_pylist()
    assert all(m.endswith(".png") for m in members)
    assert np.all(np.isfinite(d.embeddings.astype(np.float32)))
