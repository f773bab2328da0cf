"""Neighbour groups: every sample exactly once, graph-neighbour packing, and the in-group count against a loop."""

from __future__ import annotations

import numpy as np
import pytest

from xclr_prep.groups import in_group_neighbors, neighbour_groups


def random_graph(captions: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(np.delete(np.arange(captions), c), k, replace=False) for c in range(captions)])


def loop_reference(caption_of, group_of, neighbor_ids) -> np.ndarray:
    counts = np.zeros(len(caption_of), dtype=np.int64)
    for i in range(len(caption_of)):
        for j in range(len(caption_of)):
            if i != j and group_of[i] == group_of[j]:
                a, b = caption_of[i], caption_of[j]
                counts[i] += a == b or b in neighbor_ids[a] or a in neighbor_ids[b]
    return counts


@pytest.mark.parametrize("group_size", [1, 2, 8])
def test_every_sample_lands_in_exactly_one_group(group_size):
    rng = np.random.default_rng(0)
    caption_of = rng.integers(0, 300, 2000)  # repeated captions too
    order, sizes = neighbour_groups(caption_of, random_graph(300, 6, 1), group_size, seed=0)
    assert np.array_equal(np.sort(order), np.arange(2000))
    assert sizes.sum() == 2000 and sizes.max() <= group_size and sizes.min() >= 1


def test_a_group_is_its_seed_caption_then_neighbours_of_its_members():
    rng = np.random.default_rng(6)
    caption_of = rng.integers(0, 50, 400)
    neighbor_ids = random_graph(50, 4, 7)
    order, sizes = neighbour_groups(caption_of, neighbor_ids, 6, seed=1)
    for g in np.split(caption_of[order], np.cumsum(sizes)[:-1]):
        run = int(np.argmax(g != g[0])) if (g != g[0]).any() else len(g)
        assert (g[run:] != g[0]).all()  # the seed caption's samples come first
        assert len(set(g[run:].tolist())) == len(g) - run  # then one sample per neighbour caption
        for j in range(run, len(g)):
            assert any(g[j] in neighbor_ids[m] for m in g[:j])  # a neighbour of an earlier member


def test_in_group_count_equals_a_loop_reference():
    rng = np.random.default_rng(2)
    caption_of = rng.integers(0, 40, 300)
    neighbor_ids = random_graph(40, 5, 3)
    group_of = np.sort(rng.integers(0, 60, 300))
    assert np.array_equal(in_group_neighbors(caption_of, group_of, neighbor_ids),
                          loop_reference(caption_of, group_of, neighbor_ids))


def test_grouping_packs_far_more_neighbours_than_random_order():
    rng = np.random.default_rng(4)
    neighbor_ids = random_graph(1000, 16, 5)
    caption_of = rng.permutation(1000)
    order, sizes = neighbour_groups(caption_of, neighbor_ids, 8, seed=0)
    grouped = in_group_neighbors(caption_of[order], np.repeat(np.arange(len(sizes)), sizes), neighbor_ids).mean()
    random = in_group_neighbors(caption_of[rng.permutation(1000)], np.arange(1000) // 8, neighbor_ids).mean()
    assert grouped >= 5 * random and grouped >= 1.5
