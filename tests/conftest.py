"""Session fixtures: one Ray for the session's `xclr-prep` commands, the real packaged model, real WordNet captions,
the tuxpaint embed and shards, a third of the stamps (as they are, and as 32 px captioned sets), and the inputs and
uninterrupted references of the prep fault tests, each built once per session. Helpers live in *_helpers.py,
ray_cluster.py and the fault_ledger plugin."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from data_helpers import labelled_tar, read_labelled_tar, tiny_png
from prep_helpers import EMBED_ARGS, EMBED_PART_ROWS, EMBED_PARTS, GRAPH_ARGS, TUX_GRAPH_ARGS, run_prep
from ray_cluster import RayCluster

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download; subprocesses inherit it
pytest_plugins = ["fault_ledger"]


@pytest.fixture(scope="session", autouse=True)
def shared_ray(tmp_path_factory):
    """A single-node Ray of this machine's CPUs that every `xclr-prep` command of the session joins through
    RAY_ADDRESS (as under `ray job submit`), instead of starting and stopping a local Ray of its own (seconds a
    command). The tests of the local start pass prep_helpers.local_ray_env()."""
    with RayCluster(tmp_path_factory.mktemp("shared-ray")) as ray:
        ray.start_head(cpus=os.cpu_count())
        os.environ.update(ray.env, RAY_ADDRESS=ray.address)
        yield ray
        del os.environ["RAY_ADDRESS"]


@pytest.fixture(scope="session")
def model_path() -> str:
    from xclr_schemas import default_caption_model

    return default_caption_model()


@pytest.fixture(scope="session")
def encoder(model_path):
    from xclr_prep.encoder import CaptionEncoder

    return CaptionEncoder(model_path, "cpu", batch_size=64)


@pytest.fixture(scope="session")
def wordnet():
    """The first 20k WordNet captions (key, caption) as a pyarrow Table."""
    from xclr_prep.sample_corpora import wordnet_captions

    return wordnet_captions(limit=20_000)


@pytest.fixture(scope="session")
def tux_embed(tmp_path_factory) -> Path:
    """Root holding ``tars`` (the real tuxpaint stamps as img2dataset tars, 100 per tar) and ``embed`` (their
    `xclr-prep embed` output with category labels)."""
    from xclr_prep.sample_corpora import write_tuxpaint_tars

    root = tmp_path_factory.mktemp("tux")
    write_tuxpaint_tars(root / "tars", per_tar=100)
    run_prep("embed", root / "tars", "--out", root / "embed", "--label-col", "label", "--no-progress")
    return root


@pytest.fixture(scope="session")
def tux_shards(tux_embed) -> Path:
    """Training shards of the tuxpaint stamps with caption embeddings (k 16, groups of 8, 200 samples a shard)."""
    out = tux_embed / "train-shards"
    run_prep("graph", tux_embed / "embed", "--out", out, *TUX_GRAPH_ARGS)
    return out


@pytest.fixture(scope="session")
def fashion_embed(tmp_path_factory) -> Path:
    """Root holding ``fm.parquet`` (the first 1000 Fashion-MNIST training images: key, label, PNG bytes in "image"),
    ``classes.txt`` and ``embed``, their class-label-mode embed (--label-col, --classnames, --template "a photo of a
    {}")."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from xclr_schemas.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, idx_files, read_idx

    root = tmp_path_factory.mktemp("fashion")
    images, labels = read_idx(*idx_files(FASHION_MNIST_DIR, "train"))
    pngs = []
    for image in images[:1000]:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    pq.write_table(pa.table({"key": [f"fm{i}" for i in range(1000)], "label": labels[:1000].tolist(), "image": pngs}),
                   root / "fm.parquet")
    (root / "classes.txt").write_text("\n".join(FASHION_MNIST_CLASSES) + "\n")
    run_prep("embed", root / "fm.parquet", "--out", root / "embed", "--label-col", "label", "--image-col", "image",
             "--classnames", root / "classes.txt", "--template", "a photo of a {}", "--no-progress")
    return root


@pytest.fixture(scope="session")
def stamps_third(tux_embed, tmp_path_factory) -> Path:
    """Every third tuxpaint stamp with a caption, of the categories that have two such stamps or more (the set can
    then be split, stratified by category): their own PNGs, captions and category labels, as a labelled set
    (classnames.txt lists the categories present). A small set of real stamps for tests that run xclr-eval."""
    from collections import Counter

    samples = []
    for path in sorted((tux_embed / "tars").glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        samples += [(members[f"{k}.png"], members[f"{k}.txt"], json.loads(members[f"{k}.json"])["category"])
                    for k in sorted({name.split(".")[0] for name in members if name.endswith(".txt")})]
    samples = samples[::3]
    counts = Counter(category for _, _, category in samples)
    names = sorted(category for category, n in counts.items() if n >= 2)
    return labelled_tar(tmp_path_factory.mktemp("stamps-third") / "set",
                        [(png, caption, names.index(c)) for png, caption, c in samples if c in names], names)


@pytest.fixture(scope="session")
def captioned(stamps_third, tmp_path_factory) -> tuple[Path, Path]:
    """(a database, its held-out queries): stamps_third as 32 px PNGs, and the same mirrored."""
    import io

    from PIL import Image, ImageOps

    out, samples = tmp_path_factory.mktemp("captioned"), read_labelled_tar(stamps_third)
    names = (stamps_third / "classnames.txt").read_text().split("\n")[:-1]

    def thumbnail(png: bytes, mirror: bool) -> bytes:
        image = Image.open(io.BytesIO(png)).convert("RGBA")
        image.thumbnail((32, 32))
        buf = io.BytesIO()
        (ImageOps.mirror(image) if mirror else image).save(buf, format="PNG")
        return buf.getvalue()

    return tuple(labelled_tar(out / name, [(thumbnail(png, mirror), caption, label) for png, caption, label in samples],
                              names) for name, mirror in (("db", False), ("queries", True)))


@dataclass(frozen=True)
class TrainedRun:
    """A finished `xclr-train` run: its directory, the options that made it (less --out) and torch's intra-op
    threads it ran with (a run repeats another bit for bit only with as many: they set the reduction order)."""
    dir: Path
    args: tuple[str, ...]
    threads: int


# One X-CLR run per backbone family on the tuxpaint shards, shared by the eval, export and resume tests:
# 2 epochs of 2 steps (latest.pt, epoch-0001.pt, epoch-0002.pt).
SHARED_RUN = ("--image-size", "32", "--proj-hidden", "32", "--proj-dim", "16", "--batch-size", "16", "--steps", "4",
              "--samples-per-epoch", "32", "--workers", "1", "--log-every", "1", "--no-progress")
FAMILIES = {"convnet": ("--arch", "convnet"), "vit": ("--arch", "test_vit", "--patch-size", "8"),
            "torchvision": ("--arch", "resnet18")}


@pytest.fixture(scope="session")
def trained_run(tux_shards, tmp_path_factory) -> Callable[[str], TrainedRun]:
    """family -> its shared run (SHARED_RUN), trained the first time a test asks for it. Tests only read it."""
    import torch
    from train_helpers import train_in_process

    runs: dict[str, TrainedRun] = {}

    def get(family: str) -> TrainedRun:
        if family not in runs:
            args = ("--data", str(tux_shards), *FAMILIES[family], *SHARED_RUN)
            out = tmp_path_factory.mktemp(f"run-{family}") / "tux-xclr"
            train_in_process(*args, "--out", out)
            runs[family] = TrainedRun(out, args, torch.get_num_threads())
        return runs[family]

    return get


@pytest.fixture
def prep():
    return run_prep


@pytest.fixture(scope="session")
def embed_corpus(tmp_path_factory, wordnet) -> Path:
    """EMBED_PARTS x EMBED_PART_ROWS WordNet captions with a tiny PNG each (column "image") in one Parquet table:
    EMBED_PARTS parts under EMBED_ARGS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = wordnet.slice(0, EMBED_PART_ROWS * EMBED_PARTS)
    path = tmp_path_factory.mktemp("corpus") / "wordnet.parquet"
    pq.write_table(table.append_column("image", pa.array([tiny_png(i) for i in range(table.num_rows)])), path)
    return path


@pytest.fixture(scope="session")
def wordnet_embed_dir(embed_corpus, tmp_path_factory) -> Path:
    """The uninterrupted `xclr-prep embed` of embed_corpus under EMBED_ARGS: the embed fault tests' reference, and
    the graph tests' input (15 search blocks, 50 shards under GRAPH_ARGS)."""
    out = tmp_path_factory.mktemp("reference") / "embed"
    run_prep("embed", embed_corpus, "--out", out, *EMBED_ARGS)
    return out


@pytest.fixture(scope="session")
def embed_reference(wordnet_embed_dir):
    """wordnet_embed_dir, loaded."""
    from xclr_schemas import load_embed_dir

    d = load_embed_dir(wordnet_embed_dir)
    assert len(d.manifest["parts"]) == EMBED_PARTS
    return d


@pytest.fixture(scope="session")
def graph_reference(wordnet_embed_dir, tmp_path_factory) -> Path:
    """The uninterrupted `xclr-prep graph` of wordnet_embed_dir under GRAPH_ARGS."""
    out = tmp_path_factory.mktemp("graph-reference") / "out"
    run_prep("graph", wordnet_embed_dir, "--out", out, *GRAPH_ARGS)
    return out


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory) -> dict:
    """tests/ddp_two_ranks.py on two real torchrun ranks (gloo, one thread each), run once for the 1-vs-2-process
    tests of test_train_ddp.py and test_micro_batch.py: {"step": ddp_step's results, "micro": ddp_micro's}."""
    import subprocess

    import torch
    from train_helpers import torchrun_cmd

    out = tmp_path_factory.mktemp("two-ranks") / "two.pt"
    proc = subprocess.run(torchrun_cmd(2, Path(__file__).resolve().parent / "ddp_two_ranks.py", out),
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return torch.load(out)
