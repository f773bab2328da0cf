"""Optimisers and the learning-rate schedule.

LARS (You et al. 2017, as SimCLR uses it): SGD with momentum where each weight matrix's update is scaled by the
trust ratio  eta * ||w|| / ||g + wd * w||.  Biases and BatchNorm parameters get neither weight decay nor the trust
ratio. AdamW applies weight decay to the same parameters.

Schedule, per step s of S with W warm-up steps:  lr(s) = peak * (s + 1) / W  for s < W,
then  peak * 0.5 * (1 + cos(pi * (s - W) / (S - W))).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """The update above for every parameter of a group at once (`torch._foreach_*`: a few kernels per group, not a
    Python loop over parameters); momentum buffers start at 0, so the first is the first scaled gradient."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust_coefficient: float = 1e-3) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["lars"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                w_norm, g_norm = torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(grads))
                trust = torch.where((w_norm > 0) & (g_norm > 0), group["trust_coefficient"] * w_norm / g_norm,
                                    torch.ones_like(w_norm))
                torch._foreach_mul_(grads, list(trust.unbind()))
            for p in params:
                if "momentum" not in self.state[p]:
                    self.state[p]["momentum"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum"] for p in params]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights of convolutions and linear layers decay (and get LARS' trust ratio); biases and norms do not."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lars": True},
            {"params": plain, "weight_decay": 0.0, "lars": False}]


def make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr)
    if name == "adamw":
        for g in groups:
            del g["lars"]
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown --optimizer {name!r}; choose lars or adamw")


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """The schedule above."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
