"""The caption encoder: one sentence-transformers model, loaded once, encoding many parts.

``encode(texts)`` returns float32 rows normalised to unit L2 norm: e_i = f(t_i) / ||f(t_i)||_2, in input order.

Length-sorted batching: the texts are ordered by *token* count and cut into batches of `batch_size`, so every
batch pads to nearly one length. (``SentenceTransformer.encode`` orders by character count, which pads far more;
the gain is measured in docs/benchmarks.md, Token-count batching; the embeddings are the same.) On CUDA the model
runs in fp16 and the rows are normalised again in float32.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import transformers
from sentence_transformers import SentenceTransformer

from xclr_prep.errors import PrepError

transformers.logging.set_verbosity_error()  # the "sequence longer than max" warning: scan counts those itself
transformers.logging.disable_progress_bar()  # a "Loading weights" bar per actor


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict (names and raw tensor bytes, in name order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class CaptionEncoder:
    """A sentence-transformers model (trust_remote_code off) on `device`, with the digest of its weights, its
    output `dim` and its token limit `max_seq_length`. Raises PrepError when the model cannot be loaded."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 256) -> None:
        try:
            st = SentenceTransformer(model, device=device, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - any load failure becomes one line for the user
            raise PrepError(f"cannot load model {model!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        self.weights_sha256 = weights_sha256(st)
        if device.startswith("cuda"):
            st.half()
        self.model = st
        self.batch_size = batch_size
        # sentence-transformers before 5.4 (a GPU node's may be older than the pinned one) name it differently
        self.dim = int((getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension)())
        self.max_seq_length = int(st.max_seq_length)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token count of each text, special tokens included, before truncation."""
        if not texts:
            return []
        ids = self.model.tokenizer(texts, truncation=False, return_attention_mask=False,
                                   return_token_type_ids=False)["input_ids"]
        return [len(i) for i in ids]

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit-norm rows, in input order."""
        emb = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort(self.count_tokens(texts), kind="stable")
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            emb[batch] = self.model.encode([texts[i] for i in batch], batch_size=len(batch), convert_to_numpy=True,
                                           show_progress_bar=False)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb
