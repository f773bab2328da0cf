"""Tests the SigLIP loss against a float64 loop reference written from losses/siglip.py's docstring, and its
row-level form (a rank's image rows against the gathered captions) against the whole batch."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_losses import _assert_same_value_and_grads, _dot, _leaves, _projections, _rank_rows, _unit_rows, _views

from xclr_train.losses.siglip import BIAS_INIT, LOG_T_INIT, siglip_loss, siglip_rows


def siglip_ref(z1, z2, text, caption_ids, log_t, bias):
    """-(1 / 2M) sum over the 2M image views i and the M captions b of log sigmoid(l_ib (exp(t') x_i . e_b + b)),
    l_ib = +1 for the same caption id, else -1."""
    m = z1.shape[0]
    u = _views(z1, z2)
    e = _unit_rows(text)
    c = [int(x) for x in caption_ids]
    total = 0.0
    for i in range(2 * m):
        for b in range(m):
            sign = 1.0 if c[b] == c[i % m] else -1.0
            z = torch.exp(log_t) * _dot(u[i], e[b]) + bias
            total = total + torch.log(1 + torch.exp(-sign * z))  # - log sigmoid(sign z)
    return total / (2 * m)


def _scalars(log_t, bias):
    """(float32 leaves for the library, float64 leaves with the same values for the reference)."""
    lib = [torch.tensor(float(v)).requires_grad_() for v in (log_t, bias)]
    ref = [torch.tensor(float(v), dtype=torch.float64).requires_grad_() for v in (log_t, bias)]
    return lib, ref


@pytest.mark.parametrize("caption_ids", [[0, 1, 2, 3, 4, 5], [4, 9, 4, 1, 9, 4], [2, 2, 2, 2, 2, 2]])
@pytest.mark.parametrize("scalars", [(LOG_T_INIT, BIAS_INIT), (math.log(3.0), 0.5)])
def test_siglip_loss_matches_loop_reference(caption_ids, scalars):
    """siglip_loss (value, gradients w.r.t. z1, z2, t' and b) equals the loop reference, at SigLIP's initial t' and
    b and elsewhere, including duplicated caption ids (each a positive column)."""
    caption_ids = torch.tensor(caption_ids)
    m, d = len(caption_ids), 5
    z1, z2 = _projections(7 + int(caption_ids.sum()), m, d)
    text = torch.randn(m, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2.5
    (a1, a2), (r1, r2) = _leaves(z1, z2)
    (lt, b), (rlt, rb) = _scalars(*scalars)
    lib = siglip_loss(a1, a2, text.float(), caption_ids, lt, b)
    ref = siglip_ref(r1, r2, text.float().double(), caption_ids, rlt, rb)
    _assert_same_value_and_grads(lib, [a1, a2, lt, b], ref, [r1, r2, rlt, rb])


def test_siglip_starts_at_temperature_10_and_bias_minus_10():
    assert math.exp(LOG_T_INIT) == pytest.approx(10.0) and BIAS_INIT == -10.0


@pytest.mark.parametrize("world", [2, 3])
def test_siglip_rank_rows_average_to_whole_batch(world):
    """siglip_rows per rank (its image views against all captions), averaged over ranks, equals siglip_loss, in
    value and in the gradients w.r.t. the projections, t' and b."""
    m, d = 12, 5
    caption_ids = torch.tensor([3, 1, 3, 7, 1, 3, 8, 9, 7, 2, 4, 3])
    z1, z2 = _projections(40 + world, m, d)
    z = torch.cat([z1, z2]).float().requires_grad_()
    text = torch.randn(m, d, generator=torch.Generator().manual_seed(41))
    log_t, bias = torch.tensor(1.2, requires_grad=True), torch.tensor(-2.0, requires_grad=True)
    images, texts = F.normalize(z, dim=1), F.normalize(text, dim=1)
    image_ids = caption_ids.repeat(2)
    parts = [siglip_rows(images[rows], image_ids[rows], texts, caption_ids, log_t, bias)
             for rows in (_rank_rows(m, world, r) for r in range(world))]
    averaged = torch.stack(parts).mean()
    whole = siglip_loss(z[:m], z[m:], text, caption_ids, log_t, bias)
    torch.testing.assert_close(averaged, whole, rtol=1e-5, atol=1e-6)
    for got, want in zip(torch.autograd.grad(averaged, [z, log_t, bias], retain_graph=True),
                         torch.autograd.grad(whole, [z, log_t, bias])):
        assert want.abs().max() > 1e-3
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
