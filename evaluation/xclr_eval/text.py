"""Text embeddings of class captions and image captions: the target side of the semantic-alignment metrics."""

from __future__ import annotations

import numpy as np


def caption_embeddings(texts: list[str], model: str) -> np.ndarray:
    """Unit-norm sentence-transformer embeddings (n, d) of `texts`."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model, device="cpu", trust_remote_code=False)
    return encoder.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


def class_caption_embeddings(classnames: list[str], template: str, model: str) -> np.ndarray:
    """Unit-norm sentence-transformer embeddings (C, d) of template.format(name) for every class name."""
    return caption_embeddings([template.format(name) for name in classnames], model)
