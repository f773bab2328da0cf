"""Caption ids and duplicate keys over the whole corpus (runs on the driver; numpy only, no per-row Python).

Input: for every scan part, in corpus order, the 16-byte digests of each row's normalised caption and key.

- A key seen before (in corpus order) makes the row a duplicate: it is dropped and counted as duplicate_key.
- Every distinct caption among the remaining rows gets a caption id, dense from 0, in order of first appearance.
  Hence the captions first seen in part p are the contiguous range [start_p, end_p), and the embed step of part
  p embeds exactly those, each caption once.

Memory: about 80 bytes per input row (digests, sort buffers, ids): ~1 GB at 12M rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PartIds:
    caption_ids: np.ndarray  # int64 per scan row; -1 = dropped as a duplicate key
    is_first: np.ndarray  # bool per scan row: the first occurrence of its caption (embedded in this part)
    start: int  # ids [start, end) are first seen in this part
    end: int


def assign_caption_ids(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[PartIds], int]:
    """Map each part's (caption digests, key digests), both 'V16' arrays of equal length, to caption ids.

    Returns the per-part ids and the number of rows dropped as duplicate keys.
    """
    sizes = [len(c) for c, _ in parts]
    captions = np.concatenate([c for c, _ in parts]) if parts else np.empty(0, "V16")
    keys = np.concatenate([k for _, k in parts]) if parts else np.empty(0, "V16")
    n = len(captions)

    kept = np.zeros(n, dtype=bool)
    kept[np.unique(keys, return_index=True)[1]] = True
    rows = np.flatnonzero(kept)

    _, first, inverse = np.unique(captions[rows], return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    ids = np.full(n, -1, dtype=np.int64)
    ids[rows] = rank[inverse.reshape(-1)]
    is_first = np.zeros(n, dtype=bool)
    is_first[rows[first]] = True

    out, offset, start = [], 0, 0
    for size in sizes:
        part_first = is_first[offset : offset + size]
        end = start + int(part_first.sum())
        out.append(PartIds(ids[offset : offset + size], part_first, start, end))
        offset, start = offset + size, end
    return out, int(n - len(rows))
