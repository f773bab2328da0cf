"""Neighbour groups: the shard layout that lets sparse X-CLR targets meet their graph (docs/design.md, Targets and
loss).

In a random batch of B samples from U captions an anchor meets about B * k / U of its top-k neighbours, so sparse
targets would be SimCLR. Instead samples are packed in groups of up to g whose captions are graph neighbours; the
trainer shuffles whole groups, so an anchor meets about g - 1 neighbours per batch.

Greedy grouping: seeds are drawn in a random order of samples (so captions are seeded by frequency); a group
starts with the seed and the other samples of its caption, then takes one unused sample of each neighbour caption
of its members, members in the order they joined, each member's neighbours best first. A group that runs out of
candidates stays smaller than g. Every sample lands in exactly one group.

Two samples are *graph neighbours* when their captions are equal or one caption is in the other's top-k list
(the symmetric graph the sparse targets use).
"""

from __future__ import annotations

import numpy as np

_CHUNK = 65_536


def neighbour_groups(caption_of: np.ndarray, neighbor_ids: np.ndarray, group_size: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, sizes): sample indices (into `caption_of`) grouped, and the size of each group, groups in
    formation order. ``neighbor_ids[c]`` is caption c's top-k list (ids, best first; -1 = none)."""
    rng = np.random.default_rng(seed)
    n = len(caption_of)
    if group_size == 1:
        return rng.permutation(n), np.ones(n, dtype=np.int64)
    # Samples of each caption, in random order: by_caption[start[c]:start[c] + count[c]].
    by_caption = rng.permutation(n)
    by_caption = by_caption[np.argsort(caption_of[by_caption], kind="stable")]
    count = np.bincount(caption_of, minlength=len(neighbor_ids))
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    used = np.zeros(len(neighbor_ids), dtype=np.int64)  # samples of caption c taken so far
    order = np.empty(n, dtype=np.int64)
    sizes: list[int] = []
    pos = 0
    seeds = rng.permutation(n)

    def take(c: int, m: int) -> None:
        nonlocal pos
        first = start[c] + used[c]
        order[pos:pos + m] = by_caption[first:first + m]
        used[c] += m
        pos += m

    for s in (s for lo in range(0, n, _CHUNK) for s in seeds[lo:lo + _CHUNK].tolist()):
        c = int(caption_of[s])
        if used[c] == count[c]:
            continue
        size = int(min(group_size, count[c] - used[c]))
        take(c, size)
        members, joined = [c], {c}
        m = 0
        while size < group_size and m < len(members):
            for cand in neighbor_ids[members[m]].tolist():
                if cand < 0 or cand in joined or used[cand] == count[cand]:
                    continue
                take(cand, 1)
                members.append(cand)
                joined.add(cand)
                size += 1
                if size == group_size:
                    break
            m += 1
        sizes.append(size)
    return order, np.array(sizes, dtype=np.int64)


def in_group_neighbors(caption_of: np.ndarray, group_of: np.ndarray, neighbor_ids: np.ndarray) -> np.ndarray:
    """For each sample, the number of other samples of its group that are its graph neighbours.

    `group_of` must be non-decreasing along the samples (groups contiguous), as in a shard layout.
    """
    n = len(caption_of)
    counts = np.zeros(n, dtype=np.int64)
    starts = np.flatnonzero(np.diff(group_of, prepend=group_of[:1] - 1) != 0)
    sizes = np.diff(np.append(starts, n))
    ends = np.repeat(starts + sizes, sizes)  # end of each sample's group
    index = np.arange(n)
    for d in range(1, int(sizes.max(initial=1))):  # pairs (a, a + d) inside a group
        pairs = index[index + d < ends]
        for lo in range(0, len(pairs), _CHUNK):
            a = pairs[lo:lo + _CHUNK]
            b = a + d
            ca, cb = caption_of[a], caption_of[b]
            linked = (ca == cb) | (neighbor_ids[ca] == cb[:, None]).any(1) | (neighbor_ids[cb] == ca[:, None]).any(1)
            counts[a[linked]] += 1
            counts[b[linked]] += 1
    return counts
