"""Contracts between xclr stages: file layouts, Arrow schemas, manifests, versions.

Light by design (numpy, pyarrow and fsspec only): both `xclr_prep` and `xclr_train` import it; it imports neither.
"""

from xclr_schemas.embed_dir import (
    CAPTIONS_SCHEMA,
    EMBED_SCHEMA_VERSION,
    SAMPLES_SCHEMA,
    EmbeddingRows,
    EmbedDir,
    EmbedDirError,
    load_embed_dir,
    part_name,
    part_paths,
    read_captions,
    read_manifest,
    read_samples,
)
from xclr_schemas.graph_dir import GRAPH_SCHEMA_VERSION, NEIGHBOR_DTYPE, Graph, GraphDirError, load_graph
from xclr_schemas.names import MANIFEST, SIZES, default_caption_model
from xclr_schemas.shards import (
    SHARDS_SCHEMA_VERSION,
    ShardsDirError,
    load_npy,
    npy_bytes,
    read_shards_manifest,
    shard_name,
)

__all__ = [
    "CAPTIONS_SCHEMA",
    "EMBED_SCHEMA_VERSION",
    "GRAPH_SCHEMA_VERSION",
    "MANIFEST",
    "NEIGHBOR_DTYPE",
    "SAMPLES_SCHEMA",
    "SHARDS_SCHEMA_VERSION",
    "SIZES",
    "EmbedDir",
    "EmbedDirError",
    "EmbeddingRows",
    "Graph",
    "GraphDirError",
    "ShardsDirError",
    "load_embed_dir",
    "load_graph",
    "load_npy",
    "npy_bytes",
    "part_name",
    "part_paths",
    "read_captions",
    "read_manifest",
    "read_samples",
    "default_caption_model",
    "read_shards_manifest",
    "shard_name",
]
