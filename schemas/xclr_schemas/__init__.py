"""Contracts between xclr stages: file layouts, Arrow schemas, manifests, versions.

Light by design (numpy + pyarrow only): both `xclr_prep` and `xclr_train` import it; it imports neither.
"""

from xclr_schemas.embed_dir import (
    CAPTIONS_SCHEMA,
    EMBED_SCHEMA_VERSION,
    MANIFEST,
    SAMPLES_SCHEMA,
    EmbedDir,
    EmbedDirError,
    load_embed_dir,
    part_name,
    part_paths,
    read_manifest,
)

__all__ = [
    "CAPTIONS_SCHEMA",
    "EMBED_SCHEMA_VERSION",
    "MANIFEST",
    "SAMPLES_SCHEMA",
    "EmbedDir",
    "EmbedDirError",
    "load_embed_dir",
    "part_name",
    "part_paths",
    "read_manifest",
]
