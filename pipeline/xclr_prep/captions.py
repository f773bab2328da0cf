"""Caption normalisation and identity.

Two captions are the same caption (one ``caption_id``, embedded once) when their normalised texts are equal:

    normalise(t) = " ".join(unicodedata.normalize("NFC", t).split())

that is, Unicode NFC, leading/trailing whitespace removed and every internal whitespace run replaced by one space.
Case and punctuation are kept (cased models see them). The normalised text is what gets embedded and stored.
Identity is the 16-byte BLAKE2b digest of the normalised UTF-8 text (collision odds at 12M captions ~ 1e-25).
"""

from __future__ import annotations

import hashlib
import unicodedata


def normalise(text: str) -> str:
    """NFC, trimmed, whitespace runs collapsed to one space (see module docstring)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def digest(text: str) -> bytes:
    """16-byte BLAKE2b digest of `text` encoded as UTF-8; used for captions and keys alike."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
