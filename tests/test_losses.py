"""Tests the contrastive losses (X-CLR, NT-Xent, SupCon, CLIP) against loop references written from their definitions.

Every reference below is an explicit Python loop over anchors i and columns j in float64 (docs/design.md,
Targets and loss, and the losses' docstrings), independent of the library's vectorised algebra. The library
computes in float32, so values and autograd gradients are compared with small relative tolerances.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from xclr_train.losses import clip_loss, nt_xent_loss, supcon_loss, xclr_loss
from xclr_train.losses.clip import clip_rows
from xclr_train.losses.simclr import nt_xent_rows
from xclr_train.losses.soft import LogSumExp, soft_contrastive
from xclr_train.losses.supcon import supcon_weights
from xclr_train.losses.xclr import xclr_weights

RTOL, ATOL = 1e-4, 1e-5


# ---------------------------------------------------------------- loop references (float64, scalar ops)

def _unit_rows(z):
    """Rows of z as lists of torch scalars, each divided by its Euclidean norm (loop over coordinates)."""
    out = []
    for r in range(z.shape[0]):
        coords = [z[r, k] for k in range(z.shape[1])]
        norm = torch.sqrt(sum(c * c for c in coords))
        out.append([c / norm for c in coords])
    return out


def _dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def _views(z1, z2):
    """The 2M unit-norm views, ordered [z1; z2]: view i belongs to sample i mod M."""
    return _unit_rows(z1) + _unit_rows(z2)


def _log_softmax(logits):
    """{j: log softmax(logits)_j} for a dict {j: scalar logit} (max-shifted log-sum-exp)."""
    shift = max(float(v.detach()) for v in logits.values())
    lse = shift + torch.log(sum(torch.exp(v - shift) for v in logits.values()))
    return {j: v - lse for j, v in logits.items()}


def _softmax_floats(values):
    """{j: softmax(values)_j} for a dict {j: float}, in math."""
    shift = max(values.values())
    e = {j: math.exp(v - shift) for j, v in values.items()}
    total = sum(e.values())
    return {j: x / total for j, x in e.items()}


def _gram(u):
    """dots[i][j] = u_i . u_j for i != j, each pair computed once (the dot product is symmetric)."""
    n = len(u)
    dots = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            dots[i][j] = dots[j][i] = _dot(u[i], u[j])
    return dots


def _log_p(dots, i, tau):
    """log p_ij = log softmax_{j != i}(u_i . u_j / tau) over the views."""
    return _log_softmax({j: dots[i][j] / tau for j in range(len(dots)) if j != i})


def xclr_ref(z1, z2, s, tau, tau_s):
    """docs/design.md, Targets and loss: mean over the 2M anchors of -sum_{j != i} t_ij log p_ij,
    G[i, j] = S[a(i), a(j)]."""
    m = z1.shape[0]
    u = _views(z1, z2)
    dots = _gram(u)
    total = 0.0
    for i in range(2 * m):
        log_p = _log_p(dots, i, tau)
        t = _softmax_floats({j: float(s[i % m, j % m]) / tau_s for j in range(2 * m) if j != i})
        total = total - sum(t[j] * log_p[j] for j in log_p)
    return total / (2 * m)


def nt_xent_ref(z1, z2, tau):
    """NT-Xent: mean over the 2M anchors of -log p_{i, pos(i)}, pos(i) = i + M mod 2M."""
    m = z1.shape[0]
    u = _views(z1, z2)
    dots = _gram(u)
    total = 0.0
    for i in range(2 * m):
        total = total - _log_p(dots, i, tau)[(i + m) % (2 * m)]
    return total / (2 * m)


def supcon_ref(z1, z2, labels, tau):
    """SupCon L_out: mean over anchors of -1/|P(i)| sum_{p in P(i)} log p_ip, P(i) = {j != i: y_j = y_i}."""
    m = z1.shape[0]
    u = _views(z1, z2)
    dots = _gram(u)
    y = [int(labels[j % m]) for j in range(2 * m)]
    total = 0.0
    for i in range(2 * m):
        log_p = _log_p(dots, i, tau)
        positives = [j for j in range(2 * m) if j != i and y[j] == y[i]]
        assert (i + m) % (2 * m) in positives
        total = total - sum(log_p[p] for p in positives) / len(positives)
    return total / (2 * m)


def clip_ref(z1, z2, text, caption_ids, tau):
    """clip.py docstring: image views vs the M captions and captions vs the 2M views, uniform targets over columns
    with the anchor's caption id, full softmax (no self column); loss = (L_img + L_txt) / 2."""
    m = z1.shape[0]
    u = _views(z1, z2)
    e = _unit_rows(text)
    c = [int(x) for x in caption_ids]
    l_img = 0.0
    for i in range(2 * m):
        log_p = _log_softmax({b: _dot(u[i], e[b]) / tau for b in range(m)})
        pos = [b for b in range(m) if c[b] == c[i % m]]
        l_img = l_img - sum(log_p[b] for b in pos) / len(pos)
    l_txt = 0.0
    for a in range(m):
        log_p = _log_softmax({j: _dot(e[a], u[j]) / tau for j in range(2 * m)})
        pos = [j for j in range(2 * m) if c[j % m] == c[a]]
        l_txt = l_txt - sum(log_p[j] for j in pos) / len(pos)
    return (l_img / (2 * m) + l_txt / m) / 2


# ---------------------------------------------------------------- data

def _projections(seed, m, d):
    """z1, z2 (M, d) float64 with rows of very different norms (the losses must normalise them)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    z1 = torch.randn(m, d, generator=g, dtype=f64) * (0.3 + 3 * torch.rand(m, 1, generator=g, dtype=f64))
    z2 = torch.randn(m, d, generator=g, dtype=f64) * (0.3 + 3 * torch.rand(m, 1, generator=g, dtype=f64))
    return z1, z2


def _random_similarity(seed, n):
    """A random symmetric n x n similarity with unit diagonal and entries in (-0.2, 1)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, n, generator=g, dtype=torch.float64) * 1.2 - 0.2
    s = (a + a.T) / 2
    s.fill_diagonal_(1.0)
    return s


REPEATED_IDS = torch.tensor([0, 1, 2, 0, 3, 1, 4, 0])


def _similarity(kind, seed, m):
    if kind == "random":
        return _random_similarity(seed, m)
    assert m == len(REPEATED_IDS)
    per_caption = _random_similarity(seed, int(REPEATED_IDS.max()) + 1)
    s = per_caption[REPEATED_IDS[:, None], REPEATED_IDS[None, :]]
    dup = (REPEATED_IDS[:, None] == REPEATED_IDS[None, :]) & ~torch.eye(m, dtype=torch.bool)
    assert dup.any() and (s[dup] == 1).all()
    return s


def _leaves(z1, z2):
    """(float32 leaves for the library, float64 leaves with the same values for the reference)."""
    lib = [z.float().requires_grad_() for z in (z1, z2)]
    ref = [z.float().double().requires_grad_() for z in (z1, z2)]
    return lib, ref


def _assert_same_value_and_grads(lib_loss, lib_leaves, ref_loss, ref_leaves, rtol=RTOL, atol=ATOL):
    assert lib_loss.dtype == torch.float32
    torch.testing.assert_close(lib_loss.double(), ref_loss.detach(), rtol=rtol, atol=atol)
    lib_grads = torch.autograd.grad(lib_loss, lib_leaves)
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves)
    for lg, rg in zip(lib_grads, ref_grads):
        assert rg.abs().max() > 1e-3  # the comparison is not vacuous
        torch.testing.assert_close(lg.double(), rg, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- X-CLR

@pytest.mark.parametrize("kind", ["random", "repeated"])
@pytest.mark.parametrize("tau_s", [0.02, 0.1, 1.0])
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5])
def test_xclr_loss_matches_loop_reference(tau, tau_s, kind):
    """xclr_loss and its gradients w.r.t. z1, z2 equal the loop reference of docs/design.md (Targets and loss),
    for random symmetric S and for S with repeated captions (S = 1 between duplicates)."""
    m, d = 8, 5
    z1, z2 = _projections(int(tau * 100 + tau_s * 1000), m, d)
    s = _similarity(kind, 7, m)
    (a1, a2), (r1, r2) = _leaves(z1, z2)
    lib = xclr_loss(a1, a2, s.float(), tau=tau, tau_s=tau_s)
    ref = xclr_ref(r1, r2, s.float().double(), tau, tau_s)
    _assert_same_value_and_grads(lib, [a1, a2], ref, [r1, r2])


def test_xclr_loss_defaults_are_tau_0_1():
    """xclr_loss without tau/tau_s uses the documented defaults tau = tau_s = 0.1."""
    z1, z2 = _projections(3, 6, 4)
    s = _random_similarity(4, 6)
    lib = xclr_loss(z1.float(), z2.float(), s.float())
    ref = xclr_ref(z1, z2, s, 0.1, 0.1)
    torch.testing.assert_close(lib.double(), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
def test_nt_xent_matches_loop_reference_and_xclr_with_identity(tau):
    """nt_xent_loss (value and gradients) equals the loop NT-Xent reference (positive of view i is view i+M mod 2M);
    xclr_loss with S = identity and tau_s = 1e-4 (targets are one-hot on the other view) equals nt_xent_loss."""
    m, d = 8, 5
    z1, z2 = _projections(int(tau * 1000), m, d)
    (a1, a2), (r1, r2) = _leaves(z1, z2)
    nt = nt_xent_loss(a1, a2, tau)
    _assert_same_value_and_grads(nt, [a1, a2], nt_xent_ref(r1, r2, tau), [r1, r2])

    (b1, b2), _ = _leaves(z1, z2)
    x = xclr_loss(b1, b2, torch.eye(m), tau=tau, tau_s=1e-4)
    torch.testing.assert_close(x, nt_xent_loss(z1.float(), z2.float(), tau), rtol=1e-5, atol=1e-6)
    gx = torch.autograd.grad(x, [b1, b2])
    c1, c2 = z1.float().requires_grad_(), z2.float().requires_grad_()
    gn = torch.autograd.grad(nt_xent_loss(c1, c2, tau), [c1, c2])
    for a, b in zip(gx, gn):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("m", [2, 5])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_xclr_closed_form_identical_projections(m, tau):
    """Closed form: if all 2M projections point the same way (every z_i . z_j = 1 after normalisation), p_i is
    uniform over the 2M - 1 other views, so for ANY targets t_i (which sum to 1) the loss is log(2M - 1)."""
    g = torch.Generator().manual_seed(m)
    direction = torch.randn(1, 4, generator=g)
    scales = 0.5 + torch.rand(2 * m, 1, generator=g)
    z = direction * scales  # same direction, different norms
    for s in (torch.eye(m), _random_similarity(m, m).float()):
        loss = xclr_loss(z[:m], z[m:], s, tau=tau, tau_s=0.1)
        assert loss.item() == pytest.approx(math.log(2 * m - 1), rel=1e-5)


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("tau,tau_s", [(0.1, 0.1), (0.5, 0.05), (0.2, 1.0)])
def test_xclr_closed_form_orthogonal_samples(m, tau, tau_s):
    """Closed form: samples on orthogonal axes, both views of sample a equal to e_a, S = identity. Then every
    anchor sees 1 positive column (dot 1) and 2M-2 negatives (dot 0):
        p_pos = e^{1/tau} / (e^{1/tau} + 2M - 2),   t_pos = q = e^{1/tau_s} / (e^{1/tau_s} + 2M - 2),
        loss  = -q log p_pos - (1 - q) log p_neg = log(e^{1/tau} + 2M - 2) - q / tau.
    With tau_s -> 0 (q = 1) this is NT-Xent's log(1 + (2M - 2) e^{-1/tau})."""
    z = torch.eye(m, 8) * torch.arange(1, m + 1, dtype=torch.float32)[:, None]
    q = math.exp(1 / tau_s) / (math.exp(1 / tau_s) + 2 * m - 2)
    expected = math.log(math.exp(1 / tau) + 2 * m - 2) - q / tau
    # float32 loss = LSE - logit with both near 1/tau: absolute error a few ulps of 1/tau
    tol = 1e-5
    loss = xclr_loss(z, 2 * z, torch.eye(m), tau=tau, tau_s=tau_s)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=tol)
    sharp = xclr_loss(z, 2 * z, torch.eye(m), tau=tau, tau_s=1e-4)
    assert sharp.item() == pytest.approx(math.log1p((2 * m - 2) * math.exp(-1 / tau)), rel=1e-5, abs=tol)
    assert nt_xent_loss(z, 2 * z, tau).item() == pytest.approx(sharp.item(), rel=1e-5, abs=tol)


# ---------------------------------------------------------------- SupCon and CLIP

@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 0, 2, 1, 0, 3, 3], [5, 5, 5, 5, 5, 5, 5, 5]])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_supcon_loss_matches_loop_reference(labels, tau):
    """supcon_loss (value and gradients) equals the loop reference of SupCon L_out with P(i) = every other view
    with the anchor's label (the other view of the same sample always included), for distinct, repeated and
    all-equal labels."""
    labels = torch.tensor(labels)
    z1, z2 = _projections(len(set(labels.tolist())) + int(tau * 100), len(labels), 6)
    (a1, a2), (r1, r2) = _leaves(z1, z2)
    lib = supcon_loss(a1, a2, labels, tau=tau)
    _assert_same_value_and_grads(lib, [a1, a2], supcon_ref(r1, r2, labels, tau), [r1, r2])


def test_supcon_with_distinct_labels_is_nt_xent():
    """With all labels distinct, P(i) is just the other view: supcon_loss equals nt_xent_loss."""
    z1, z2 = _projections(11, 7, 5)
    torch.testing.assert_close(supcon_loss(z1.float(), z2.float(), torch.arange(7) * 3, tau=0.2),
                               nt_xent_loss(z1.float(), z2.float(), tau=0.2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("caption_ids", [[0, 1, 2, 3, 4, 5], [4, 9, 4, 1, 9, 4], [2, 2, 2, 2, 2, 2]])
@pytest.mark.parametrize("tau", [0.05, 0.3])
def test_clip_loss_matches_loop_reference(caption_ids, tau):
    """clip_loss (value and gradients w.r.t. z1, z2) equals the loop reference of clip.py's docstring, including
    duplicated caption ids (uniform targets over the columns with the anchor's caption id)."""
    caption_ids = torch.tensor(caption_ids)
    m, d = len(caption_ids), 5
    z1, z2 = _projections(int(tau * 100) + int(caption_ids.sum()), m, d)
    g = torch.Generator().manual_seed(5)
    text = torch.randn(m, d, generator=g, dtype=torch.float64) * 2.5
    (a1, a2), (r1, r2) = _leaves(z1, z2)
    lib = clip_loss(a1, a2, text.float(), caption_ids, tau=tau)
    ref = clip_ref(r1, r2, text.float().double(), caption_ids, tau)
    _assert_same_value_and_grads(lib, [a1, a2], ref, [r1, r2])


# ---------------------------------------------------------------- row-level form (DDP ranks)

def _rank_rows(m, world, rank):
    """Views held by `rank`: samples rank*m_r .. rank*m_r + m_r - 1, view 1 then view 2 (m_r = M / world)."""
    mr = m // world
    own = torch.arange(rank * mr, (rank + 1) * mr)
    return torch.cat([own, own + m])


def _assert_ranks_equal_whole(parts, whole, single, ref, z):
    """The mean of the per-rank losses equals the whole-batch row loss, the single-process loss and the float64
    loop reference, and its gradient w.r.t. the projections `z` equals the whole batch's."""
    averaged = torch.stack(parts).mean()
    torch.testing.assert_close(averaged, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole, single, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(averaged.double(), ref, rtol=RTOL, atol=ATOL)
    g_avg, = torch.autograd.grad(averaged, [z], retain_graph=True)
    g_whole, = torch.autograd.grad(whole, [z])
    torch.testing.assert_close(g_avg, g_whole, rtol=1e-4, atol=1e-6)


def test_logsumexp_is_torchs_in_value_and_gradient():
    """Float64 logits with masked (-inf) entries: LSE_i and its gradient equal torch.logsumexp's, whichever finite
    column carries it (the first, or the last)."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 9, generator=g, dtype=torch.float64) * 5).scatter(1, torch.arange(6)[:, None], -math.inf)
    for finite in (torch.arange(1, 7), torch.full((6,), 8)):
        x, y = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        weights = torch.rand(6, generator=g, dtype=torch.float64)
        ours, ref = LogSumExp.apply(x, finite), torch.logsumexp(y, dim=1)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        (ours * weights).sum().backward()
        (ref * weights).sum().backward()
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("tau,tau_s", [(0.1, 0.1), (0.3, 0.02)])
def test_soft_contrastive_rank_rows_average_to_whole_batch(world, tau, tau_s):
    """soft_contrastive with X-CLR weights, evaluated per rank on that rank's anchor rows against all 2M columns and
    averaged over ranks, equals the whole-batch value (and xclr_loss and the loop reference), gradients included."""
    m, d = 12, 6
    z1, z2 = _projections(world, m, d)
    s = _random_similarity(world + 1, m).float()
    z = torch.cat([z1, z2]).float().requires_grad_()
    cols = F.normalize(z, dim=1)
    whole = soft_contrastive(cols, cols, torch.arange(2 * m), xclr_weights(s, tau_s), tau)
    parts = []
    for r in range(world):
        rows = _rank_rows(m, world, r)
        samples = rows[: len(rows) // 2] % m  # the rank's samples; their two views are its anchor rows
        parts.append(soft_contrastive(cols[rows], cols, rows, xclr_weights(s[samples], tau_s), tau))
    with torch.no_grad():
        ref = xclr_ref(z1.float().double(), z2.float().double(), s.double(), tau, tau_s)
    _assert_ranks_equal_whole(parts, whole, xclr_loss(z1.float(), z2.float(), s, tau=tau, tau_s=tau_s), ref, z)


@pytest.mark.parametrize("world", [2, 3])
def test_supcon_rank_rows_average_to_whole_batch(world):
    """soft_contrastive with SupCon weights on rank rows, averaged over ranks, equals supcon_loss."""
    m = 12
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 3, 4, 2, 5, 0])
    z1, z2 = _projections(20 + world, m, 5)
    cols = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    parts = [soft_contrastive(cols[rows], cols, rows, supcon_weights(labels[rows[: len(rows) // 2] % m], labels), 0.1)
             for rows in (_rank_rows(m, world, r) for r in range(world))]
    torch.testing.assert_close(torch.stack(parts).mean(), supcon_loss(z1.float(), z2.float(), labels, 0.1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("tau", [0.1, 0.4])
def test_nt_xent_rank_rows_average_to_whole_batch(world, tau):
    """nt_xent_rows per rank (its anchor rows against all 2M columns), averaged over ranks, equals the whole-batch
    nt_xent_rows, nt_xent_loss and the loop reference; gradients of the average equal the whole batch's."""
    m, d = 12, 6
    z1, z2 = _projections(30 + world, m, d)
    z = torch.cat([z1, z2]).float().requires_grad_()
    cols = F.normalize(z, dim=1)
    whole = nt_xent_rows(cols, cols, torch.arange(2 * m), tau)
    parts = [nt_xent_rows(cols[rows], cols, rows, tau) for rows in (_rank_rows(m, world, r) for r in range(world))]
    with torch.no_grad():
        ref = nt_xent_ref(z1.float().double(), z2.float().double(), tau)
    _assert_ranks_equal_whole(parts, whole, nt_xent_loss(z1.float(), z2.float(), tau), ref, z)


@pytest.mark.parametrize("world", [2, 3])
def test_clip_rank_rows_average_to_whole_batch(world):
    """clip_rows per rank (its image views and its captions against the global columns), averaged over ranks,
    equals clip_loss (clip_rows' docstring)."""
    m, d = 12, 5
    caption_ids = torch.tensor([3, 1, 3, 7, 1, 3, 8, 9, 7, 2, 4, 3])
    z1, z2 = _projections(40 + world, m, d)
    text = torch.randn(m, d, generator=torch.Generator().manual_seed(41))
    images = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    texts = F.normalize(text, dim=1)
    image_ids = caption_ids.repeat(2)
    mr = m // world
    parts = []
    for r in range(world):
        rows = _rank_rows(m, world, r)
        caps = torch.arange(r * mr, (r + 1) * mr)
        parts.append(clip_rows(images[rows], image_ids[rows], images, image_ids, texts[caps], caption_ids[caps],
                               texts, caption_ids, 0.1))
    torch.testing.assert_close(torch.stack(parts).mean(), clip_loss(z1.float(), z2.float(), text, caption_ids, 0.1),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("shapes", [((4, 3), (5, 3), (4, 4)),   # z2 has another M
                                    ((4, 3), (4, 2), (4, 4)),   # z2 has another d
                                    ((4, 3), (4, 3), (5, 5)),   # S for another M
                                    ((4, 3), (4, 3), (4, 5)),   # S not square
                                    ((4, 3), (4, 3), (16,))])   # S flat
def test_xclr_loss_rejects_mismatched_shapes(shapes):
    """xclr_loss raises ValueError when z1, z2 and S are not (M, d), (M, d), (M, M)."""
    a, b, s = (torch.randn(*shape) for shape in shapes)
    with pytest.raises(ValueError):
        xclr_loss(a, b, s)


@pytest.mark.parametrize("tau_s", [0.0, -0.1])
def test_xclr_loss_rejects_non_positive_tau_s(tau_s):
    """tau_s <= 0 raises ValueError (in xclr_loss and xclr_weights)."""
    z1, z2 = _projections(1, 4, 3)
    with pytest.raises(ValueError):
        xclr_loss(z1.float(), z2.float(), torch.eye(4), tau=0.1, tau_s=tau_s)
    with pytest.raises(ValueError):
        xclr_weights(torch.eye(4), tau_s)
