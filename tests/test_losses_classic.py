"""Tests the classic objectives (triplet, margin contrastive, N-pair, MoCo, BYOL, NNCLR) and X-CLR with a queue
against loop references written from their modules' docstrings, and their row-level forms against the whole batch.

References are explicit Python loops over anchors and columns in float64, as in test_losses.py (whose helpers they
share); the library computes in float32.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from test_losses import (
    _assert_same_value_and_grads,
    _dot,
    _leaves,
    _log_softmax,
    _projections,
    _random_similarity,
    _rank_rows,
    _softmax_floats,
    _unit_rows,
    _views,
)

from xclr_train.losses import byol_loss, contrastive_loss, moco_loss, nnclr_loss, npair_loss, triplet_loss, xclr_loss
from xclr_train.losses.contrastive import contrastive_rows
from xclr_train.losses.nnclr import nnclr_rows
from xclr_train.losses.npair import L2, npair_rows
from xclr_train.losses.soft import soft_contrastive
from xclr_train.losses.triplet import triplet_rows
from xclr_train.losses.xclr import xclr_weights

LABELS = [0, 1, 0, 2, 1, 0, 3, 3]  # repeated labels: several positives per anchor, several negatives


def _positives(labels):
    y = torch.tensor(labels)
    return y[:, None] == y[None, :]


def _dist(u, v):
    return torch.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def _pos_neg(P, m, i):
    """View-level positives (j != i, P[a(i), a(j)]) and negatives (not P) of anchor view i."""
    pos = [j for j in range(2 * m) if j != i and P[i % m][j % m]]
    neg = [j for j in range(2 * m) if not P[i % m][j % m]]
    return pos, neg


# ---------------------------------------------------------------- loop references

def triplet_ref(z1, z2, P, margin, mining):
    m = z1.shape[0]
    u = _views(z1, z2)
    total = 0.0
    for i in range(2 * m):
        pos, neg = _pos_neg(P, m, i)
        if not neg:
            continue
        d = {j: _dist(u[i], u[j]) for j in range(2 * m) if j != i}
        if mining == "hardest":
            hardest_p = max(pos, key=lambda j: d[j].item())
            hardest_n = min(neg, key=lambda j: d[j].item())
            total = total + torch.clamp(d[hardest_p] - d[hardest_n] + margin, min=0)
        else:
            per = 0.0
            for p in pos:
                farther = [n for n in neg if d[n].item() > d[p].item()]
                n = min(farther, key=lambda j: d[j].item()) if farther else max(neg, key=lambda j: d[j].item())
                per = per + torch.clamp(d[p] - d[n] + margin, min=0)
            total = total + per / len(pos)
    return total / (2 * m)


def contrastive_ref(z1, z2, P, margin):
    m = z1.shape[0]
    u = _views(z1, z2)
    total = 0.0
    for i in range(2 * m):
        pos, neg = _pos_neg(P, m, i)
        pulled = sum(_dist(u[i], u[p]) ** 2 for p in pos) / len(pos)
        pushed = sum(torch.clamp(margin - _dist(u[i], u[n]), min=0) ** 2 for n in neg) / len(neg) if neg else 0.0
        total = total + pulled + pushed
    return total / (2 * m)


def npair_ref(z1, z2, P):
    m = z1.shape[0]
    f = [[z[r, k] for k in range(z.shape[1])] for z in (z1, z2) for r in range(m)]  # unnormalised views
    total = 0.0
    for i in range(2 * m):
        other = (i + m) % (2 * m)
        negatives = [j for j in range(2 * m) if (j < m) != (i < m) and not P[i % m][j % m]]
        total = total + torch.log(1 + sum(torch.exp(_dot(f[i], f[n]) - _dot(f[i], f[other])) for n in negatives))
    reg = sum(_dot(v, v) for v in f) / (2 * m)
    return total / (2 * m) + L2 * reg


def moco_ref(q1, q2, k1, k2, queue, tau):
    m = q1.shape[0]
    q = _unit_rows(q1) + _unit_rows(q2)
    k = _unit_rows(k2.detach()) + _unit_rows(k1.detach())  # the key of query i is the other view's
    bank = [[queue[r, c] for c in range(queue.shape[1])] for r in range(queue.shape[0])]
    total = 0.0
    for i in range(2 * m):
        logits = {"pos": _dot(q[i], k[i]) / tau, **{r: _dot(q[i], bank[r]) / tau for r in range(len(bank))}}
        total = total - _log_softmax(logits)["pos"]
    return total / (2 * m)


def byol_ref(p1, p2, t1, t2):
    m = p1.shape[0]
    p = _unit_rows(p1) + _unit_rows(p2)
    t = _unit_rows(t2.detach()) + _unit_rows(t1.detach())
    return sum(sum((a - b) ** 2 for a, b in zip(p[i], t[i])) for i in range(2 * m)) / (2 * m)


def nnclr_ref(z1, z2, p1, p2, support, tau):
    m = z1.shape[0]
    zs = (_unit_rows(z1), _unit_rows(z2))
    ps = (_unit_rows(p1), _unit_rows(p2))
    bank = [[support[r, c] for c in range(support.shape[1])] for r in range(support.shape[0])]
    total = 0.0
    for view, other in ((0, 1), (1, 0)):
        for i in range(m):
            nn = max(bank, key=lambda q: float(_dot(zs[view][i], q)))
            total = total - _log_softmax({b: _dot(nn, ps[other][b]) / tau for b in range(m)})[i]
    return total / (2 * m)


def xclr_queue_ref(z1, z2, s, queue, s_queue, tau, tau_s):
    """X-CLR over the 2M views and Q queue entries: G[i, j] = S[a(i), a(j)], G[i, q] = S_queue[a(i), q]."""
    m = z1.shape[0]
    u = _views(z1, z2)
    bank = _unit_rows(queue)
    total = 0.0
    for i in range(2 * m):
        cols = {j: u[j] for j in range(2 * m) if j != i}
        cols.update({("q", r): bank[r] for r in range(len(bank))})
        log_p = _log_softmax({j: _dot(u[i], c) / tau for j, c in cols.items()})
        g = {j: float(s[i % m, j % m] if not isinstance(j, tuple) else s_queue[i % m, j[1]]) / tau_s for j in cols}
        t = _softmax_floats(g)
        total = total - sum(t[j] * log_p[j] for j in cols)
    return total / (2 * m)


# ---------------------------------------------------------------- whole batch against the references

@pytest.mark.parametrize("labels", [LABELS, list(range(8)), [5] * 8])
@pytest.mark.parametrize("mining", ["hardest", "semihard"])
@pytest.mark.parametrize("margin", [0.2, 1.5])
def test_triplet_matches_loop_reference(labels, mining, margin):
    """triplet_loss (value and gradients) equals the loop reference for distinct, repeated and all-equal labels
    (no negatives: every anchor contributes 0), both minings, a small and a large margin."""
    z1, z2 = _projections(len(set(labels)) + int(margin * 10), 8, 5)
    (a1, a2), (r1, r2) = _leaves(z1, z2)
    P = _positives(labels)
    lib = triplet_loss(a1, a2, P, margin, mining)
    ref = triplet_ref(r1, r2, P.tolist(), margin, mining)
    if len(set(labels)) == 1:
        assert lib.item() == 0 and float(ref) == 0
        return
    _assert_same_value_and_grads(lib, [a1, a2], ref, [r1, r2])


def test_semihard_prefers_the_closest_negative_beyond_the_positive():
    """A hand-made case: anchor a, positive at distance 0.5, negatives at 0.3, 0.7 and 1.2. Semi-hard mining takes
    0.7 (the closest farther than the positive), batch-hard takes 0.3 (the closest of all)."""
    def at(dist):  # a unit vector at Euclidean distance `dist` from e0, in the e0-e1 plane
        c = 1 - dist ** 2 / 2
        return [c, math.sqrt(1 - c * c)]
    # samples 0 and 1 share label 0: sample 1's views lie at 0.5 from sample 0's view 1 (at e0)
    view1 = torch.tensor([[1.0, 0.0], at(0.5), at(0.3), at(0.7), at(1.2)])
    P = _positives([0, 0, 1, 2, 3])
    d = torch.cdist(view1, view1)
    anchor_terms = {}
    for mining in ("hardest", "semihard"):
        rows = triplet_rows(torch.cat([view1[:1], view1[:1]]), torch.cat([view1, view1]),  # sample 0's two
                            torch.tensor([0, 5]), P[:1], 1.0, mining)  # views, both at e0, against view 2 = view 1
        anchor_terms[mining] = rows.item()
    # the anchor's positives: its own other view (d 0) and sample 1's two views (d 0.5); margin 1
    assert anchor_terms["hardest"] == pytest.approx(0.5 - 0.3 + 1.0, abs=1e-5)
    expected_semihard = ((0 - float(d[0, 2]) + 1) + 2 * (0.5 - 0.7 + 1)) / 3
    assert anchor_terms["semihard"] == pytest.approx(expected_semihard, abs=1e-5)


@pytest.mark.parametrize("labels", [LABELS, list(range(8))])
@pytest.mark.parametrize("margin", [0.5, 1.0])
def test_contrastive_matches_loop_reference(labels, margin):
    z1, z2 = _projections(50 + int(margin * 10), 8, 5)
    (a1, a2), (r1, r2) = _leaves(z1, z2)
    P = _positives(labels)
    _assert_same_value_and_grads(contrastive_loss(a1, a2, P, margin), [a1, a2],
                                 contrastive_ref(r1, r2, P.tolist(), margin), [r1, r2])


@pytest.mark.parametrize("labels", [LABELS, list(range(8))])
def test_npair_matches_loop_reference(labels):
    """npair_loss on unnormalised projections (small scale, as after Sohn's L2 penalty) equals the reference."""
    z1, z2 = (z * 0.3 for z in _projections(60, 8, 5))
    (a1, a2), (r1, r2) = _leaves(z1, z2)
    P = _positives(labels)
    _assert_same_value_and_grads(npair_loss(a1, a2, P), [a1, a2], npair_ref(r1, r2, P.tolist()), [r1, r2])


@pytest.mark.parametrize("tau", [0.1, 0.5])
@pytest.mark.parametrize("q", [1, 17])
def test_moco_matches_loop_reference_and_ignores_key_gradients(tau, q):
    """moco_loss equals the reference; no gradient reaches the keys (they come from the momentum encoder)."""
    z1, z2 = _projections(70 + q, 6, 5)
    k1, k2 = _projections(80 + q, 6, 5)
    queue = F.normalize(torch.randn(q, 5, generator=torch.Generator().manual_seed(q)), dim=1)
    (a1, a2), (r1, r2) = _leaves(z1, z2)
    keys = k1.float().requires_grad_(), k2.float().requires_grad_()
    lib = moco_loss(a1, a2, *keys, queue, tau)
    ref = moco_ref(r1, r2, k1, k2, queue.double(), tau)
    assert torch.autograd.grad(lib, keys, retain_graph=True, allow_unused=True) == (None, None)
    _assert_same_value_and_grads(lib, [a1, a2], ref, [r1, r2])


def test_byol_matches_loop_reference():
    p1, p2 = _projections(90, 6, 5)
    t1, t2 = _projections(91, 6, 5)
    (a1, a2), (r1, r2) = _leaves(p1, p2)
    _assert_same_value_and_grads(byol_loss(a1, a2, t1.float(), t2.float()), [a1, a2], byol_ref(r1, r2, t1, t2),
                                 [r1, r2])
    # a perfect prediction of the other view costs nothing, whatever its scale
    assert byol_loss(3 * t2, t1, t1, t2).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.3])
def test_nnclr_matches_loop_reference(tau):
    """nnclr_loss equals the reference (the nearest support row by dot product replaces the anchor)."""
    z1, z2 = _projections(100, 6, 5)
    p1, p2 = _projections(101, 6, 5)
    support = F.normalize(torch.randn(20, 5, generator=torch.Generator().manual_seed(3)), dim=1)
    (a1, a2), (r1, r2) = _leaves(p1, p2)
    lib = nnclr_loss(z1.float(), z2.float(), a1, a2, support, tau)
    ref = nnclr_ref(z1.float().double(), z2.float().double(), r1, r2, support.double(), tau)
    _assert_same_value_and_grads(lib, [a1, a2], ref, [r1, r2])


def test_nnclr_with_the_batch_as_support_is_nt_xent_between_views():
    """When the support set holds exactly the anchors' own projections, NN(z) = z and the loss is the cross-view
    InfoNCE of z against the other view's predictions."""
    z1, z2 = (F.normalize(z.float(), dim=1) for z in _projections(110, 6, 5))
    p1, p2 = (F.normalize(z.float(), dim=1) for z in _projections(111, 6, 5))
    expected = (F.cross_entropy(z1 @ p2.T / 0.1, torch.arange(6)) + F.cross_entropy(z2 @ p1.T / 0.1,
                                                                                     torch.arange(6))) / 2
    torch.testing.assert_close(nnclr_loss(z1, z2, p1, p2, torch.cat([z1, z2]), 0.1), expected)


@pytest.mark.parametrize("tau,tau_s", [(0.1, 0.1), (0.3, 0.02)])
def test_xclr_with_a_queue_matches_loop_reference(tau, tau_s):
    """xclr_loss with queue columns equals the reference over the 2M - 1 other views and the Q queue entries."""
    m, q = 6, 5
    z1, z2 = _projections(120, m, 4)
    queue = torch.randn(q, 4, generator=torch.Generator().manual_seed(121), dtype=torch.float64)
    s = _random_similarity(122, m + q)
    (a1, a2), (r1, r2) = _leaves(z1, z2)
    lib = xclr_loss(a1, a2, s[:m, :m].float(), tau, tau_s, queue.float(), s[:m, m:].float())
    ref = xclr_queue_ref(r1, r2, s[:m, :m], queue.float().double(), s[:m, m:], tau, tau_s)
    _assert_same_value_and_grads(lib, [a1, a2], ref, [r1, r2])


# ---------------------------------------------------------------- row-level form (DDP ranks)

@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("loss", ["triplet-hardest", "triplet-semihard", "contrastive", "npair"])
def test_pair_loss_rank_rows_average_to_whole_batch(world, loss):
    """Each rank's anchors against all 2M columns, averaged over ranks, equal the whole batch, gradients too."""
    m = 12
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 3, 4, 2, 5, 0])
    P = labels[:, None] == labels[None, :]
    z1, z2 = _projections(130 + world, m, 5)
    z = torch.cat([z1, z2]).float().requires_grad_()
    cols = z * 0.3 if loss == "npair" else F.normalize(z, dim=1)

    def rows_loss(rows):
        p = P[rows[: len(rows) // 2] % m]
        if loss == "npair":
            return npair_rows(cols[rows], cols, rows, p)
        if loss == "contrastive":
            return contrastive_rows(cols[rows], cols, rows, p, 1.0)
        return triplet_rows(cols[rows], cols, rows, p, 0.2, loss.split("-")[1])

    whole = rows_loss(torch.arange(2 * m))
    parts = [rows_loss(_rank_rows(m, world, r)) for r in range(world)]
    averaged = torch.stack(parts).mean()
    torch.testing.assert_close(averaged, whole, rtol=1e-5, atol=1e-6)
    g_avg, = torch.autograd.grad(averaged, [z], retain_graph=True)
    g_whole, = torch.autograd.grad(whole, [z])
    assert g_whole.abs().max() > 1e-4
    torch.testing.assert_close(g_avg, g_whole, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("world", [2, 3])
def test_nnclr_and_queued_xclr_rank_rows_average_to_whole_batch(world):
    """nnclr_rows and soft_contrastive with queue columns, per rank and averaged, equal the whole batch."""
    m, q = 12, 7
    z1, z2 = (F.normalize(z.float(), dim=1) for z in _projections(140 + world, m, 5))
    p1, p2 = (F.normalize(z.float(), dim=1) for z in _projections(150 + world, m, 5))
    support = F.normalize(torch.randn(q, 5, generator=torch.Generator().manual_seed(world)), dim=1)
    mr = m // world
    parts = [nnclr_rows(z1[r * mr:(r + 1) * mr], z2[r * mr:(r + 1) * mr], p1, p2, support,
                        torch.arange(r * mr, (r + 1) * mr), 0.1) for r in range(world)]
    torch.testing.assert_close(torch.stack(parts).mean(), nnclr_loss(z1, z2, p1, p2, support, 0.1),
                               rtol=1e-5, atol=1e-6)

    s = _random_similarity(160 + world, m + q).float()
    weights = xclr_weights(s[:m], 0.1)
    cols = torch.cat([z1, z2])
    parts = []
    for r in range(world):
        rows = _rank_rows(m, world, r)
        samples = rows[: len(rows) // 2] % m
        parts.append(soft_contrastive(cols[rows], cols, rows, weights[samples, :m], 0.1, support,
                                      weights[samples, m:]))
    torch.testing.assert_close(torch.stack(parts).mean(), xclr_loss(z1, z2, s[:m, :m], 0.1, 0.1, support, s[:m, m:]),
                               rtol=1e-5, atol=1e-6)
