"""Tests the caption-similarity targets (sparse S from neighbour lists, dense S, calibration) against loop references.

The references are explicit loops over pairs (a, b) written from the docstrings of xclr_train/targets.py and
docs/design.md, Targets and loss: S[a, b] = 1 for the same caption id, else the larger stored similarity of the pair if
either caption lists the other among its top-k, else the floor; ids < 0 (sim NaN) are invalid and match nothing.
"""

import math

import numpy as np
import pytest
import torch

from xclr_train.losses.xclr import xclr_loss, xclr_weights
from xclr_train.targets import calibrate, dense_similarity_rows, sparse_similarity, sparse_similarity_rows


def _f32(x):
    return float(np.float32(x))


# ---------------------------------------------------------------- loop references

def sparse_ref(caption_ids, nbr_ids, nbr_sims, floor):
    """S (M x M, float64 holding float32 values) by a loop over pairs and over both neighbour lists."""
    c = caption_ids.tolist()
    ids, sims = nbr_ids.tolist(), nbr_sims.tolist()
    m = len(c)
    out = torch.empty(m, m, dtype=torch.float64)
    for a in range(m):
        for b in range(m):
            if c[a] == c[b]:
                out[a, b] = 1.0
                continue
            found = [s for i, s in zip(ids[a], sims[a]) if i >= 0 and i == c[b]]
            found += [s for i, s in zip(ids[b], sims[b]) if i >= 0 and i == c[a]]
            out[a, b] = max(found) if found else _f32(floor)
    return out


# ---------------------------------------------------------------- data

def random_batch(seed, m=12, k=4, present=6, absent=4, floor=0.3):
    """A batch of M samples whose caption ids are drawn with repeats from `present` caption ids. Every caption id
    (present or not) has a neighbour row of k other caption ids (some absent from the batch) with similarities
    descending in (floor, 1); some rows end in invalid entries (id -1, sim NaN) and one row is wholly invalid.
    Samples with the same caption carry the same row, as the shards do."""
    rng = np.random.default_rng(seed)
    pool = rng.choice(np.arange(1000), size=present + absent, replace=False)
    in_batch = pool[:present]
    table = {}
    for n, cid in enumerate(pool):
        others = pool[pool != cid]
        nbrs = rng.choice(others, size=min(k, len(others)), replace=False)
        sims = np.sort(rng.uniform(floor + 0.01, 0.99, size=len(nbrs)))[::-1]
        ids = np.full(k, -1, dtype=np.int64)
        vals = np.full(k, np.nan)
        ids[:len(nbrs)], vals[:len(nbrs)] = nbrs, sims
        invalid_tail = rng.integers(0, k) if n % 2 else 0
        if n == 1:
            invalid_tail = k
        if invalid_tail:
            ids[k - invalid_tail:], vals[k - invalid_tail:] = -1, np.nan
        table[int(cid)] = (ids, vals)
    caption_ids = rng.choice(in_batch, size=m, replace=True)
    caption_ids[:present] = in_batch  # every present caption occurs; the rest are repeats
    rng.shuffle(caption_ids)
    nbr_ids = np.stack([table[int(c)][0] for c in caption_ids])
    nbr_sims = np.stack([table[int(c)][1] for c in caption_ids])
    return (torch.from_numpy(caption_ids).long(), torch.from_numpy(nbr_ids).long(),
            torch.from_numpy(nbr_sims).float(), floor)


# ---------------------------------------------------------------- sparse

@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("seed", range(8))
def test_sparse_similarity_matches_loop_reference(seed, k):
    """sparse_similarity equals the loop reference exactly on random batches (repeated captions, neighbours absent
    from the batch, invalid -1/NaN entries), and is float32 of shape (M, M)."""
    caption_ids, nbr_ids, nbr_sims, floor = random_batch(seed, k=k)
    s = sparse_similarity(caption_ids, nbr_ids, nbr_sims, floor)
    assert s.dtype == torch.float32 and s.shape == (len(caption_ids), len(caption_ids))
    torch.testing.assert_close(s.double(), sparse_ref(caption_ids, nbr_ids, nbr_sims, floor), rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(8))
def test_sparse_similarity_properties(seed):
    """Properties on random batches: symmetric; exactly 1 where caption ids are equal (diagonal included); exactly
    the stored similarity on graph pairs (the larger one when both lists hold the pair); exactly the floor elsewhere;
    no NaN from the invalid entries."""
    caption_ids, nbr_ids, nbr_sims, floor = random_batch(100 + seed, k=5, present=6, absent=3)
    s = sparse_similarity(caption_ids, nbr_ids, nbr_sims, floor)
    assert not torch.isnan(s).any()
    assert torch.equal(s, s.T)
    same = caption_ids[:, None] == caption_ids[None, :]
    assert (s[same] == 1).all() and (torch.diagonal(s) == 1).all()
    m = len(caption_ids)
    stored = {}  # (caption a, caption b) -> similarity a lists for b
    for a in range(m):
        for i, v in zip(nbr_ids[a].tolist(), nbr_sims[a].tolist()):
            if i >= 0:
                stored[int(caption_ids[a]), i] = v
    both = graph = at_floor = 0
    for a in range(m):
        for b in range(m):
            ca, cb = int(caption_ids[a]), int(caption_ids[b])
            if ca == cb:
                continue
            vals = [stored[p] for p in ((ca, cb), (cb, ca)) if p in stored]
            both += len(vals) == 2 and vals[0] != vals[1]
            graph += bool(vals)
            at_floor += not vals
            assert s[a, b].item() == (max(vals) if vals else _f32(floor)), (a, b)
    assert both > 0 and graph > 0 and at_floor > 0  # every case occurs in the batch


def test_sparse_similarity_sizes_follow_from_the_input_sizes():
    """No tensor of the sparse targets has a size that depends on the values (unique, boolean indexing and nonzero
    do; on a GPU each makes the host wait): they run on meta tensors, which carry sizes and no values."""
    caption_ids, nbr_ids, nbr_sims, floor = random_batch(0, k=4)
    rows = torch.arange(3, 9)
    s = sparse_similarity_rows(*(t.to("meta") for t in (caption_ids, nbr_ids, nbr_sims)), floor, rows.to("meta"))
    assert s.device.type == "meta" and s.shape == (6, len(caption_ids)) and s.dtype == torch.float32


def test_sparse_similarity_hand_built_case():
    """A hand-built batch with the expected S written out: caption 10 (twice) lists 20 at 0.9 while 20 lists 10 at
    0.7 (so 0.9 both ways); 20 lists 30 at 0.6; 30 lists 40 at 0.55 and 10 at 0.5 and an absent 77; 40's row is all
    invalid (-1/NaN); 50 lists only the absent 88. Unlisted pairs get the floor 0.25."""
    nan = float("nan")
    rows = {10: ([20, 99, -1], [0.9, 0.8, nan]),
            20: ([10, 30, -1], [0.7, 0.6, nan]),
            30: ([40, 10, 77], [0.55, 0.5, 0.45]),
            40: ([-1, -1, -1], [nan, nan, nan]),
            50: ([88, -1, -1], [0.95, nan, nan])}
    caption_ids = torch.tensor([10, 20, 10, 30, 40, 50])
    nbr_ids = torch.tensor([rows[c][0] for c in caption_ids.tolist()])
    nbr_sims = torch.tensor([rows[c][1] for c in caption_ids.tolist()], dtype=torch.float32)
    f = 0.25
    expected = torch.tensor([
        # 10    20    10    30    40    50
        [1.0,  0.9,  1.0,  0.5,  f,    f],    # 10
        [0.9,  1.0,  0.9,  0.6,  f,    f],    # 20
        [1.0,  0.9,  1.0,  0.5,  f,    f],    # 10
        [0.5,  0.6,  0.5,  1.0,  0.55, f],    # 30
        [f,    f,    f,    0.55, 1.0,  f],    # 40
        [f,    f,    f,    f,    f,    1.0],  # 50
    ], dtype=torch.float32)
    s = sparse_similarity(caption_ids, nbr_ids, nbr_sims, f)
    assert torch.equal(s, expected)
    torch.testing.assert_close(s.double(), sparse_ref(caption_ids, nbr_ids, nbr_sims, f), rtol=0, atol=0)
    # --floor none: no target weight outside the graph, the graph's pairs weighted as before
    weights = xclr_weights(sparse_similarity(caption_ids, nbr_ids, nbr_sims, float("-inf")), 0.3)
    graph = expected != f
    assert torch.equal(weights == 0, ~graph)
    torch.testing.assert_close(weights[graph], torch.exp((expected[graph] - 1) / 0.3))
    z = torch.randn(2, len(caption_ids), 8, requires_grad=True)
    loss = xclr_loss(z[0], z[1], sparse_similarity(caption_ids, nbr_ids, nbr_sims, float("-inf")), tau_s=0.3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("seed", range(6))
def test_sparse_similarity_rows_are_rows_of_full_matrix(seed):
    """sparse_similarity_rows(..., rows) equals the corresponding rows of sparse_similarity, for a random unsorted
    subset of rows, a single row, and all rows in a permuted order."""
    caption_ids, nbr_ids, nbr_sims, floor = random_batch(200 + seed)
    full = sparse_similarity(caption_ids, nbr_ids, nbr_sims, floor)
    g = torch.Generator().manual_seed(seed)
    m = len(caption_ids)
    subsets = [torch.randperm(m, generator=g)[: 1 + seed % (m - 1)], torch.tensor([m - 1 - seed]),
               torch.randperm(m, generator=g)]
    for rows in subsets:
        part = sparse_similarity_rows(caption_ids, nbr_ids, nbr_sims, floor, rows)
        assert part.shape == (len(rows), m)
        assert torch.equal(part, full[rows]), rows


# ---------------------------------------------------------------- dense and calibration

def test_dense_similarity_rows_is_normalised_gram():
    """dense_similarity_rows(E[rows], E) equals the loop cosine E_a . E_b / (|E_a| |E_b|), with S[a, a] = 1."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 8, generator=g) * (0.2 + 4 * torch.rand(10, 1, generator=g))
    rows = torch.tensor([7, 0, 3, 3, 9])

    def cos(u, v):
        dot = sum(float(x) * float(y) for x, y in zip(u, v))
        return dot / math.sqrt(sum(float(x) ** 2 for x in u)) / math.sqrt(sum(float(y) ** 2 for y in v))

    ref = torch.tensor([[cos(emb[a], emb[b]) for b in range(10)] for a in rows.tolist()], dtype=torch.float64)
    s = dense_similarity_rows(emb[rows], emb)
    assert s.dtype == torch.float32 and s.shape == (5, 10)
    torch.testing.assert_close(s.double(), ref, rtol=0, atol=1e-6)
    full = dense_similarity_rows(emb, emb)
    torch.testing.assert_close(torch.diagonal(full), torch.ones(10), rtol=0, atol=1e-6)
    torch.testing.assert_close(full, full.T, rtol=0, atol=1e-6)


@pytest.mark.parametrize("background", [0.0, 0.3, 0.5, 0.82, 0.95])
def test_calibrate_matches_formula(background):
    """calibrate(S, b) equals max(0, (S - b) / (1 - b)) element by element; 1 stays 1 (up to float32 rounding: the
    library divides by 1 - b taken in float64, so b = 0.95 gives 1 + 1 ulp), b maps to exactly 0, values below b
    clip to 0, and the output is float32 of S's shape."""
    g = torch.Generator().manual_seed(int(background * 100))
    s = torch.rand(6, 7, generator=g) * 2 - 1
    s[0, 0], s[1, 2], s[3, 4] = 1.0, background, 1.0
    out = calibrate(s, background)
    assert out.dtype == torch.float32 and out.shape == s.shape
    b = _f32(background)
    for a in range(6):
        for c in range(7):
            v = float(s[a, c])
            assert out[a, c].item() == pytest.approx(max(0.0, (v - b) / (1 - b)), rel=2e-6, abs=1e-6), (a, c)
    assert out[0, 0].item() == pytest.approx(1.0, abs=1e-6) and out[3, 4].item() == pytest.approx(1.0, abs=1e-6)
    assert out[1, 2].item() == 0.0
    assert (out >= 0).all() and (out[s < b] == 0).all()
