"""Small inputs made in the test (tars, PNGs, clustered vectors, embed directories) and the reference checks
(brute-force top-k, cosine rows, equal stage results)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    """A real tar with the given (member name, bytes), in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def labelled_tar(path: Path, samples: list[tuple[bytes, bytes, int]], names: list[str]) -> Path:
    """`path`/00000.tar of (PNG, caption, label) samples as NNNNN.png, .txt and .json ({"label": ...}), and
    `path`/classnames.txt of `names`: a labelled evaluation set."""
    path.mkdir(parents=True)
    (path / "classnames.txt").write_text("\n".join(names) + "\n")
    write_tar(path / "00000.tar", [m for i, (png, caption, label) in enumerate(samples) for m in (
        (f"{i:05d}.png", png), (f"{i:05d}.txt", caption), (f"{i:05d}.json", json.dumps({"label": label}).encode()))])
    return path


def read_labelled_tar(path: Path) -> list[tuple[bytes, bytes, int]]:
    """The (PNG, caption, label) samples of `labelled_tar`'s tar, in order."""
    with tarfile.open(path / "00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    keys = sorted({name.split(".")[0] for name in members})
    return [(members[f"{k}.png"], members[f"{k}.txt"], json.loads(members[f"{k}.json"])["label"]) for k in keys]


def tiny_png(i: int) -> bytes:
    """A real 4x4 PNG whose colour encodes `i`."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (i % 251, (i // 251) % 251, 7)).save(buf, format="PNG")
    return buf.getvalue()


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int = 0) -> np.ndarray:
    """n unit vectors around `clusters` random centres (float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_embed_dir(path: Path, embeddings: np.ndarray, parts: int = 2) -> None:
    """An embed directory laid out as `xclr-prep embed` writes it, holding the given vectors (float16), one sample
    per caption with a real PNG in ``path/images.tar``: test data whose geometry the test chooses."""

    import pyarrow as pa
    import pyarrow.parquet as pq

    from xclr_schemas import CAPTIONS_SCHEMA, EMBED_SCHEMA_VERSION, SAMPLES_SCHEMA, part_paths

    n, dim = embeddings.shape
    tar = path / "images.tar"
    path.mkdir(parents=True)
    write_tar(tar, [(f"s{i:06d}.png", tiny_png(i)) for i in range(n)])
    bounds = np.linspace(0, n, parts + 1).astype(int)
    manifest_parts = []
    for p, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        files = part_paths(path, p)
        for f in files.values():
            f.parent.mkdir(exist_ok=True)
        ids = np.arange(start, end, dtype=np.int64)
        np.save(files["embeddings"], embeddings[start:end].astype(np.float16))
        pq.write_table(pa.table({"caption_id": ids, "text": [f"caption {i}" for i in ids]}, schema=CAPTIONS_SCHEMA),
                       files["captions"])
        pq.write_table(pa.table({"key": [f"s{i:06d}" for i in ids], "caption_id": ids,
                                 "image_source": [str(tar)] * len(ids),
                                 "image_member": [f"s{i:06d}.png" for i in ids],
                                 "image_row": [-1] * len(ids), "label": [-1] * len(ids)}, schema=SAMPLES_SCHEMA),
                       files["samples"])
        files["done"].write_text("{}")
        manifest_parts.append({"index": p, "samples": int(end - start), "caption_start": int(start),
                               "caption_end": int(end)})
    manifest = {"schema_version": EMBED_SCHEMA_VERSION, "dtype": "float16", "classnames": None,
                "model": {"name": "synthetic", "dim": dim, "weights_sha256": "", "max_seq_length": 0},
                "counts": {"unique_captions": n, "kept": n}, "parts": manifest_parts}
    (path / "manifest.json").write_text(json.dumps(manifest))


def brute_force_topk(x: np.ndarray, k: int, queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids) of each query row's (default: every row's) k most similar other rows, by numpy, in float64."""
    x = x.astype(np.float64)
    queries = np.arange(len(x)) if queries is None else queries
    sims = x[queries] @ x.T
    sims[np.arange(len(queries)), queries] = -np.inf
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def assert_topk_equal(sims: np.ndarray, ids: np.ndarray, ref_sims: np.ndarray, ref_ids: np.ndarray,
                      atol: float = 1e-3) -> None:
    """Same neighbours up to ties (ids may differ only where the reference similarity is tied within atol at the
    k-th place) and similarities within atol."""
    np.testing.assert_allclose(sims, ref_sims, atol=atol)
    for row in range(len(ids)):
        differ = set(ids[row].tolist()) ^ set(ref_ids[row].tolist())
        if differ:
            kth = ref_sims[row, -1]
            assert all(abs(s - kth) <= atol for s in ref_sims[row][np.isin(ref_ids[row], list(differ))]), row


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_same_result(a, b) -> None:
    """Two loaded embed directories hold the same data (embeddings equal up to fp16 rounding)."""
    assert a.captions == b.captions
    assert a.samples.equals(b.samples)
    assert a.manifest["counts"] == b.manifest["counts"]
    assert a.manifest["parts"] == b.manifest["parts"]
    np.testing.assert_allclose(a.embeddings.astype(np.float32), b.embeddings.astype(np.float32), atol=2e-3)
