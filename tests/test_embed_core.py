"""The embedding core without Ray: scan -> caption ids -> write_embed_part equals a direct encode."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import cosine_rows
from sentence_transformers import SentenceTransformer

from xclr_prep import embed_part
from xclr_prep.captions import normalise
from xclr_prep.corpus import CorpusSpec, InputFile
from xclr_prep.dedup import assign_caption_ids
from xclr_prep.embed_part import write_embed_part
from xclr_prep.scan import read_digests, scan_file


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_parts_equal_a_direct_sentence_transformers_encode(tmp_path, encoder, model_path, wordnet, dtype,
                                                           monkeypatch):
    monkeypatch.setattr(embed_part, "ENCODE_CHUNK", 64)  # parts of 150 rows are encoded and written in 3 chunks
    table = wordnet.slice(0, 400)
    captions = table.column("caption").to_pylist()
    # add 40 rows repeating earlier captions under new keys, with different whitespace
    keys = table.column("key").to_pylist() + [f"dup{i}" for i in range(40)]
    captions = captions + ["  " + c.replace(" ", "   ") for c in captions[:40]]
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"key": keys, "caption": captions}), path)

    out = tmp_path / "out"
    marker = scan_file(0, InputFile(str(path), "parquet"), CorpusSpec(), out, 150, encoder.count_tokens,
                       encoder.max_seq_length, "truncate")
    scan_paths = [out / "scan" / p["name"] for p in marker["parts"]]
    part_ids, duplicate_keys = assign_caption_ids([read_digests(p) for p in scan_paths])
    unique = list(dict.fromkeys(normalise(c) for c in captions))  # first-appearance order
    assert len(unique) < 400 + 40
    assert duplicate_keys == 0 and part_ids[-1].end == len(unique)

    worker = {"node_id": "test", "pid": 0}
    markers = [write_embed_part(out, i, p, ids, encoder, dtype, worker)
               for i, (p, ids) in enumerate(zip(scan_paths, part_ids))]
    assert sum(m["samples"] for m in markers) == 440
    emb = np.concatenate([np.load(out / "embeddings" / f"part-{i:05d}.npy") for i in range(len(markers))])
    assert emb.dtype == np.dtype(dtype) and emb.shape == (len(unique), 384)
    texts = pa.concat_tables([pq.read_table(out / "captions" / f"part-{i:05d}.parquet") for i in range(len(markers))])
    assert texts.column("text").to_pylist() == unique
    assert texts.column("caption_id").to_pylist() == list(range(len(unique)))

    direct = SentenceTransformer(model_path, device="cpu").encode(unique)
    cos = cosine_rows(emb, direct)
    assert cos.min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
