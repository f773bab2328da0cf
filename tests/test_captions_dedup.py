"""Caption normalisation and corpus-wide caption ids / duplicate keys, against a plain-Python reference."""

import numpy as np
import pytest

from xclr_prep.captions import digest, normalise
from xclr_prep.dedup import assign_caption_ids


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  a dog\t on\n the  mat ", "a dog on the mat"),
        ("Cafe\u0301", "Caf\u00e9"),  # NFD -> NFC
        ("A Dog.", "A Dog."),  # case and punctuation kept
        ("\u00a0 \u2003", ""),  # Unicode spaces only
    ],
)
def test_normalise(raw, expected):
    assert normalise(raw) == expected


def reference(parts):
    """Loop reference: first key occurrence kept; caption ids by first appearance among kept rows."""
    seen_keys, ids_of = set(), {}
    out = []
    for captions, keys in parts:
        ids = []
        for caption, key in zip(captions, keys):
            if key in seen_keys:
                ids.append(-1)
                continue
            seen_keys.add(key)
            ids.append(ids_of.setdefault(caption, len(ids_of)))
        out.append(ids)
    return out, len(ids_of)


def test_assign_caption_ids_matches_reference():
    rng = np.random.default_rng(0)
    parts_text = []
    for size in (50, 0, 120, 7, 300):
        captions = [f"caption {c}" for c in rng.integers(0, 150, size)]
        keys = [f"k{k}" for k in rng.integers(0, 400, size)]
        parts_text.append((captions, keys))
    as_digests = [
        (np.array([digest(c) for c in caps], dtype="V16"), np.array([digest(k) for k in keys], dtype="V16"))
        for caps, keys in parts_text
    ]
    parts, duplicate_keys = assign_caption_ids(as_digests)
    want, unique = reference(parts_text)
    assert [p.caption_ids.tolist() for p in parts] == want
    assert duplicate_keys == sum(ids.count(-1) for ids in want)
    assert parts[-1].end == unique
    start = 0
    for p, (caps, _) in zip(parts, parts_text):
        assert p.start == start  # contiguous ranges, in part order
        first_ids = p.caption_ids[p.is_first]
        assert first_ids.tolist() == list(range(p.start, p.end))
        start = p.end


def test_assign_caption_ids_empty():
    parts, dup = assign_caption_ids([])
    assert parts == [] and dup == 0
