"""The options of `xclr-prep embed` (`EmbedOptions` with the corpus's `CorpusSpec`) and `xclr-prep graph`
(`GraphOptions` with its `ShardOptions`): their only definition. Each option field is a command-line option with its
default, help, choices and range (`xclr_schemas.options`); building a dataclass checks it, so a bad value is a
one-line `PrepError` before any work, whether it came from the command line or from Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xclr_prep.corpus import FORMATS, CorpusSpec
from xclr_prep.errors import PrepError
from xclr_prep.scan import TOO_LONG_POLICIES
from xclr_prep.search_methods import AUTO_HELP, CHOICES, METHODS
from xclr_schemas.options import POSITIVE, UNIT_INTERVAL, Checked, option

DTYPES = ("float16", "float32")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_K = 32


def _device() -> Any:
    return option("auto", "Where the actors run (auto: cuda when the Ray cluster has GPUs, else cpu).", DEVICES)


def _gpus_per_worker() -> Any:
    return option(1.0, "GPUs per actor on cuda.", rule=POSITIVE)


def _ray_address() -> Any:
    return option(None, "Join this Ray cluster [default: $RAY_ADDRESS, which `ray job submit` sets; else start a "
                        "local Ray].", envvar="RAY_ADDRESS")


def _progress() -> Any:
    return option(True, "Progress bars.")


@dataclass(frozen=True)
class EmbedOptions(Checked):
    """`xclr-prep embed` (`xclr_prep.embed_stage`)."""
    error = PrepError

    inputs: tuple[str, ...]
    out: Path
    spec: CorpusSpec = field(default=CorpusSpec())
    input_format: str | None = option(None, "Input format [default: from the file names].",
                                      FORMATS, name="--format")
    model: str | None = option(None, "sentence-transformers name or path [default: packaged all-MiniLM-L6-v2].")
    batch_size: int = option(256, "Captions per encode batch.", rule=POSITIVE)
    device: str = _device()
    dtype: str = option("float16", "Storage dtype of the embeddings.", DTYPES)
    too_long: str = option("truncate", "Captions over the model's token limit: truncate (and count) or skip (and "
                                       "count).", TOO_LONG_POLICIES)
    part_size: int = option(100_000, "Rows per work unit (an input file may make several).", rule=POSITIVE)
    num_workers: int | None = option(None, "Actors [default: one per GPU, else one per 8 CPUs].", rule=POSITIVE)
    gpus_per_worker: float = _gpus_per_worker()
    ray_address: str | None = _ray_address()
    progress: bool = _progress()

    def check(self) -> None:
        model = self.model or ""
        if model.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(model)):
            raise PrepError(f"model path does not exist: {model}")


@dataclass(frozen=True)
class ShardOptions(Checked):
    """How `xclr-prep graph` packs samples into shards (`xclr_prep.shard_stage`)."""
    error = PrepError

    group_size: int = option(8, "Neighbour group size (1: plain random order).", rule=POSITIVE)
    shard_samples: int = option(10_000, "At most this many samples per shard.", rule=POSITIVE)
    shard_bytes: int = option(1_000_000_000, "About at most this many bytes per shard.", rule=POSITIVE)
    with_embeddings: bool = option(False, "Add KEY.emb.npy (fp16 caption embedding) to every sample.")
    seed: int = option(0, "Seed of the shard layout (group seeds, group order).")


@dataclass(frozen=True)
class GraphOptions(Checked):
    """`xclr-prep graph` (`xclr_prep.graph_stage`). `graph`: reuse this complete graph directory."""
    error = PrepError

    embed_dir: Path
    out: Path
    k: int | None = option(None, f"Neighbours per caption [default: {DEFAULT_K}, capped at U - 1].", rule=POSITIVE)
    method: str = option("auto", "Search method: " + "; ".join([AUTO_HELP] + [f"{m.name}: {m.help}" for m in
                                                                             METHODS.values()]) + ".",
                         CHOICES, name="--index")
    recall_target: float = option(0.95, "Approximate methods are tuned to this recall@k; below it (measured) the "
                                        "command fails.", rule=UNIT_INTERVAL)
    allow_low_recall: bool = option(False, "Keep a graph whose measured recall is below the target.")
    graph: Path | None = field(default=None)
    search_seed: int | None = option(None, "Seed of the search's samples: IVF training points, tuning and recall "
                                           "queries, background pairs [default: 0].")
    shards: ShardOptions = field(default=ShardOptions())
    block_size: int = option(16_384, "Query captions per search unit.", rule=POSITIVE)
    device: str = _device()
    num_workers: int | None = option(None, "Actors [default: one per GPU, else one per node].", rule=POSITIVE)
    gpus_per_worker: float = _gpus_per_worker()
    ray_address: str | None = _ray_address()
    progress: bool = _progress()

    def check(self) -> None:
        if self.graph is not None and (self.k is not None or self.method != "auto" or self.search_seed is not None):
            raise PrepError("--graph reuses a graph as it is: drop --k, --index and --search-seed")
