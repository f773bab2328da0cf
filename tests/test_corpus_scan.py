"""Reading every input format and validating rows (no Ray): what is kept, what is skipped and why."""

import gzip
import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from data_helpers import write_tar

from xclr_prep.corpus import CorpusSpec, InputFile, check_columns, find_inputs, read_rows
from xclr_prep.errors import PrepError
from xclr_prep.scan import scan_file

ROWS = [("k0", "a dog  on a mat"), ("k1", "A cat."), ("k2", "a dog on a mat"), ("k3", " a red\tcar ")]



def write_corpus(path, fmt, rows, extra=None):
    """Write (key, caption) rows in format `fmt`; `extra` = further columns {name: values}."""
    cols = {"key": [k for k, _ in rows], "caption": [c for _, c in rows], **(extra or {})}
    if fmt == "parquet":
        pq.write_table(pa.table(cols), path)
    elif fmt in ("csv", "tsv"):
        pacsv.write_csv(pa.table(cols), path, pacsv.WriteOptions(delimiter="\t" if fmt == "tsv" else ","))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(dict(zip(cols, vals))) + "\n" for vals in zip(*cols.values())))
    else:
        members = []
        for key, caption in rows:
            members += [(f"{key}.jpg", b"\xff\xd8 not really a jpeg"), (f"{key}.txt", caption.encode())]
        write_tar(path, members)
    return InputFile(str(path), fmt)


def scan(tmp_path, file, encoder, spec=CorpusSpec(), too_long="truncate", part_size=1000):
    out = tmp_path / "out"
    marker = scan_file(0, file, spec, out, part_size, encoder.count_tokens, encoder.max_seq_length, too_long)
    tables = [pq.read_table(out / "scan" / p["name"]) for p in marker["parts"]]
    return marker, (pa.concat_tables(tables).to_pylist() if tables else [])


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl", "tar"])
def test_every_format_reads_the_same_rows(tmp_path, encoder, fmt):
    file = write_corpus(tmp_path / f"c.{fmt}", fmt, ROWS)
    marker, rows = scan(tmp_path, file, encoder)
    assert [(r["key"], r["caption"]) for r in rows] == [
        ("k0", "a dog on a mat"), ("k1", "A cat."), ("k2", "a dog on a mat"), ("k3", "a red car")]
    assert marker["rows_in"] == 4 and marker["skipped"] == {} and marker["file_error"] is None
    if fmt == "tar":
        assert [r["image_member"] for r in rows] == ["k0.jpg", "k1.jpg", "k2.jpg", "k3.jpg"]
        assert {r["image_source"] for r in rows} == {file.path}


def test_parts_are_cut_at_part_size(tmp_path, encoder):
    rows = [(f"k{i}", f"caption number {i}") for i in range(25)]
    marker, got = scan(tmp_path, write_corpus(tmp_path / "c.parquet", "parquet", rows), encoder, part_size=10)
    assert [p["rows"] for p in marker["parts"]] == [10, 10, 5]
    assert [r["key"] for r in got] == [k for k, _ in rows]


def test_bad_rows_are_skipped_and_counted(tmp_path, encoder):
    lines = [
        {"key": "ok1", "caption": "fine"},
        {"key": "e1", "caption": ""},
        {"key": "e2", "caption": " \t\n "},
        {"key": "e3", "caption": None},
        {"key": "e4"},
        {"caption": "no key"},
        {"key": "", "caption": "empty key"},
        {"key": "a.b", "caption": "dotted"},
        {"key": "a/b", "caption": "slashed"},
        {"key": 17, "caption": "integer keys become strings"},
    ]
    body = "".join(json.dumps(x) + "\n" for x in lines).encode()
    body += b'{"key": "bad", "caption": "caf\xe9"}\n'  # latin-1 byte: not UTF-8
    body += b"{not json\n[1, 2]\n\n"
    path = tmp_path / "bad.jsonl"
    path.write_bytes(body)
    marker, rows = scan(tmp_path, InputFile(str(path), "jsonl"), encoder)
    assert [r["key"] for r in rows] == ["ok1", "17"]
    assert marker["skipped"] == {
        "caption_empty": 2, "caption_missing": 2, "key_missing": 2, "key_has_dot": 1, "key_has_slash": 1,
        "line_not_utf8": 1, "line_invalid": 2}
    assert marker["rows_in"] == len(rows) + sum(marker["skipped"].values())


def test_csv_caption_bytes_that_are_not_utf8_skip_only_that_row(tmp_path, encoder):
    path = tmp_path / "c.csv"
    path.write_bytes(b"key,caption\nk1,good caption\nk2,caf\xe9 au lait\nk3,another\n")
    marker, rows = scan(tmp_path, InputFile(str(path), "csv"), encoder)
    assert [r["key"] for r in rows] == ["k1", "k3"]
    assert marker["skipped"] == {"caption_not_utf8": 1}


@pytest.mark.parametrize(("policy", "kept", "skipped", "truncated"), [("truncate", 3, {}, 1),
                                                                     ("skip", 2, {"caption_too_long": 1}, 0)])
def test_captions_over_the_token_limit(tmp_path, encoder, policy, kept, skipped, truncated):
    long_but_fits = "x" * 300  # 300 characters, few tokens: must not count as too long
    too_long = " ".join(["word"] * (encoder.max_seq_length + 5))
    rows = [("k0", "short"), ("k1", long_but_fits), ("k2", too_long)]
    marker, got = scan(tmp_path, write_corpus(tmp_path / "c.parquet", "parquet", rows), encoder, too_long=policy)
    assert len(got) == kept and marker["skipped"] == skipped and marker["truncated"] == truncated


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_truncated_tar_is_skipped_whole(tmp_path, encoder, suffix):
    full = write_corpus(tmp_path / "full.tar", "tar", [(f"k{i}", f"caption {i}") for i in range(200)])
    data = open(full.path, "rb").read()
    if suffix == ".tar.gz":
        data = gzip.compress(data)
    assert sum(1 for _ in read_rows(full, CorpusSpec())) == 200
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2 + 100])
    marker, rows = scan(tmp_path, InputFile(str(cut), "tar"), encoder, part_size=10)
    assert rows == [] and marker["parts"] == [] and marker["rows_in"] == 0
    assert marker["file_error"] and ("ReadError" in marker["file_error"] or "EOFError" in marker["file_error"])
    assert not list((tmp_path / "out" / "scan").glob("*.parquet"))  # no half-file parts left behind


def test_unreadable_parquet_is_skipped(tmp_path, encoder):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"PAR1 this is not parquet at all")
    marker, rows = scan(tmp_path, InputFile(str(path), "parquet"), encoder)
    assert rows == [] and marker["file_error"]


def test_tar_duplicate_keys_dots_labels_and_missing_captions(tmp_path, encoder):
    members = [
        ("a.jpg", b"img"), ("a.txt", b"first"), ("a.json", json.dumps({"label": 2}).encode()),
        ("b.png", b"img"),  # no caption
        ("c.d.txt", b"dotted key"),
        ("e.txt", b"caption e"), ("e.json", b"{broken"),
        ("a.txt", b"second caption for a"),
        ("sub/f.txt", b"in a folder"),
    ]
    path = tmp_path / "t.tar"
    write_tar(path, members)
    marker, rows = scan(tmp_path, InputFile(str(path), "tar"), encoder, spec=CorpusSpec(label_col="label"))
    assert [(r["key"], r["caption"], r["label"], r["image_member"]) for r in rows] == [
        ("a", "first", 2, "a.jpg"), ("a", "second caption for a", -1, "")]  # the duplicate: dropped later
    assert marker["skipped"] == {"caption_missing": 1, "key_has_dot": 1, "json_invalid": 1, "key_has_slash": 1}
    assert marker["rows_in"] == 6


def test_class_label_mode(tmp_path, encoder):
    spec = CorpusSpec(label_col="label", classnames=("cat", "dump truck"), template="a photo of a {}")
    rows = [("k0", ""), ("k1", ""), ("k2", ""), ("k3", ""), ("k4", "")]
    labels = ["1", "cat", "7", "dog", None]  # index, name, out of range, unknown name, missing
    file = write_corpus(tmp_path / "c.jsonl", "jsonl", rows, {"label": labels})
    marker, got = scan(tmp_path, file, encoder, spec=spec)
    assert [(r["key"], r["caption"], r["label"]) for r in got] == [
        ("k0", "a photo of a dump truck", 1), ("k1", "a photo of a cat", 0)]
    assert marker["skipped"] == {"label_invalid": 3}


def test_find_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.parquet", "d/sub/b.csv", "d/notes.txt", "x.weird"):
        (tmp_path / name).write_text("")
    found = find_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "*.parquet")])
    assert [(f.path.rsplit("/", 1)[1], f.format) for f in found] == [("a.parquet", "parquet"), ("b.csv", "csv")]
    assert find_inputs([str(tmp_path / "x.weird")], "jsonl")[0].format == "jsonl"
    with pytest.raises(PrepError, match="cannot tell the format"):
        find_inputs([str(tmp_path / "x.weird")])
    with pytest.raises(PrepError, match="no input files match"):
        find_inputs([str(tmp_path / "nothing-*.tar")])


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_missing_column_is_a_clear_error(tmp_path, fmt):
    file = write_corpus(tmp_path / f"c.{fmt}", fmt, ROWS)
    check_columns(file, CorpusSpec())
    with pytest.raises(PrepError, match="has no column 'text'"):
        check_columns(file, CorpusSpec(caption_col="text"))


def test_tar_locate_leaves_out_what_is_gone_and_raises_a_failed_read(tmp_path):
    """Locating a tar's images (graph's locate stage): a tar gone, or cut inside a member, leaves those images
    out (counted image_missing); a read that fails otherwise (here EISDIR, as EIO would) is raised, not counted
    as missing images under a done marker that a rerun trusts."""
    from xclr_prep.corpus.tar import TarReader

    write_tar(tmp_path / "a.tar", [("k1.png", b"x" * 600), ("k2.png", b"y" * 600)])
    refs, stage = [("k1.png", -1), ("k2.png", -1)], tmp_path / "stage.tar"
    assert TarReader().locate(str(tmp_path / "a.tar"), refs, [0, 1], stage) == [
        (0, str(tmp_path / "a.tar"), 512, 600), (1, str(tmp_path / "a.tar"), 512 + 1024 + 512, 600)]
    (tmp_path / "cut.tar").write_bytes((tmp_path / "a.tar").read_bytes()[:2000])
    assert [s for s, *_ in TarReader().locate(str(tmp_path / "cut.tar"), refs, [0, 1], stage)] == [0]
    assert TarReader().locate(str(tmp_path / "gone.tar"), refs, [0, 1], stage) == []
    (tmp_path / "dir.tar").mkdir()
    with pytest.raises(IsADirectoryError):
        TarReader().locate(str(tmp_path / "dir.tar"), refs, [0, 1], stage)
