"""LARS against a float64 loop written from the formula in xclr_train/optim.py's docstring:

    g' = g + wd w,   trust = eta ||w|| / ||g'|| (1 where either norm is 0),
    buf = m buf + trust g' (the first: trust g'),   w = w - lr buf;
    parameters without LARS (biases, norms) take buf = m buf + g, w = w - lr buf.
"""

import math

import torch
from torch import nn

from xclr_train.optim import LARS, param_groups


def lars_reference(weights, grads_per_step, lars, lr, momentum, weight_decay, eta):
    """Python floats, one coordinate at a time."""
    w = [[float(x) for x in t.flatten()] for t in weights]
    buf = [None] * len(w)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = [float(x) for x in g.flatten()]
            if lars[i]:
                g = [gj + weight_decay * wj for gj, wj in zip(g, w[i])]
                w_norm, g_norm = math.sqrt(sum(x * x for x in w[i])), math.sqrt(sum(x * x for x in g))
                trust = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
                g = [trust * gj for gj in g]
            buf[i] = g if buf[i] is None else [momentum * b + gj for b, gj in zip(buf[i], g)]
            w[i] = [wj - lr * b for wj, b in zip(w[i], buf[i])]
    return w


def test_lars_matches_the_loop_reference():
    """Three steps over weights with LARS (one all zero: trust 1) and without (a bias); a parameter without a
    gradient in the first step starts its momentum at its first gradient."""
    gen = torch.Generator().manual_seed(0)
    f64 = torch.float64
    weights = [torch.randn(4, 3, generator=gen, dtype=f64), torch.zeros(2, 2, dtype=f64),
               torch.randn(5, generator=gen, dtype=f64), torch.randn(3, 2, generator=gen, dtype=f64)]
    lars = [True, True, False, True]
    grads_per_step = [[torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in weights] for _ in range(3)]
    grads_per_step[0][3] = None
    params = [nn.Parameter(w.clone()) for w in weights]
    opt = LARS([{"params": [p for p, lr in zip(params, lars) if lr], "weight_decay": 0.01, "lars": True},
                {"params": [p for p, lr in zip(params, lars) if not lr], "weight_decay": 0.0, "lars": False}],
               lr=0.5, momentum=0.9, trust_coefficient=0.02)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        opt.step()
    expected = lars_reference(weights, grads_per_step, lars, lr=0.5, momentum=0.9, weight_decay=0.01, eta=0.02)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(e, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert not torch.equal(params[1].detach(), torch.zeros(2, 2, dtype=torch.float64))  # trust 1 moved it


def test_param_groups_give_lars_and_decay_to_weight_matrices_only():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, plain = param_groups(model, 1e-6)
    assert (decay["lars"], decay["weight_decay"], plain["lars"], plain["weight_decay"]) == (True, 1e-6, False, 0.0)
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 3, 3, 3), (2, 4)]
    assert sorted(tuple(p.shape) for p in plain["params"]) == [(2,), (4,), (4,), (4,)]
