"""Optimisers, the recipe of each backbone family, and the learning-rate schedule.

LARS (You et al. 2017, as SimCLR uses it): SGD with momentum where each weight matrix's update is scaled by the
trust ratio  eta * ||w|| / ||g + wd * w||.  Biases, norm layers' parameters and the parameters a module names in
its `no_weight_decay()` (a ViT's position embedding and cls token) get neither weight decay nor the trust ratio.
AdamW decays the same parameters as LARS.

Recipes (`FAMILY_RECIPES`, by `models.family`): a backbone with BatchNorm trains as SimCLR does (LARS, lr
0.3 x batch/256, weight decay 1e-6); one without (ViT, ConvNeXt) as MoCo v3 trains ViTs (AdamW, lr 1.5e-4 x
batch/256, weight decay 0.1) with DINO's gradient clipping (global norm 3). An option given on the command line
replaces its default; with the other optimizer than the recipe's, lr and weight decay default to that optimizer's
plain values (`PLAIN`).

Schedule, per step s of S with W warm-up steps:  lr(s) = peak * (s + 1) / W  for s < W,
then  peak * 0.5 * (1 + cos(pi * (s - W) / (S - W))).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class OptimRecipe:
    """An optimizer's defaults: `lr` is the peak learning rate at a global batch of 256 (scaled linearly);
    `clip_grad` the largest global gradient norm, 0 for none."""
    optimizer: str
    lr: float
    weight_decay: float
    clip_grad: float = 0.0


PLAIN = {"lars": OptimRecipe("lars", 0.3, 1e-6), "adamw": OptimRecipe("adamw", 1e-3, 1e-6)}
FAMILY_RECIPES = {"batchnorm": PLAIN["lars"], "layernorm": OptimRecipe("adamw", 1.5e-4, 0.1, clip_grad=3.0)}


@dataclass(frozen=True)
class Settings:
    """A run's resolved optimisation settings: `lr` is the peak learning rate of its global batch."""
    optimizer: str
    lr: float
    weight_decay: float
    clip_grad: float


def resolve(family: str, global_batch: int, optimizer: str | None, lr: float | None, weight_decay: float | None,
            clip_grad: float | None) -> Settings:
    """The options given (not None) over the defaults of the family's recipe, as the module docstring says."""
    recipe = FAMILY_RECIPES[family]
    optimizer = optimizer or recipe.optimizer
    base = recipe if optimizer == recipe.optimizer else PLAIN[optimizer]
    return Settings(optimizer, lr if lr is not None else base.lr * global_batch / 256,
                    weight_decay if weight_decay is not None else base.weight_decay,
                    clip_grad if clip_grad is not None else recipe.clip_grad)


def default_help(setting: str) -> str:
    """Where the default of --optimizer, --lr, --weight-decay or --clip-grad (`setting`) comes from, for its help."""
    own = "; ".join(f"{family} backbones {getattr(r, setting)}" for family, r in FAMILY_RECIPES.items())
    if setting in ("lr", "weight_decay"):
        plain = ", ".join(f"{name} {getattr(r, setting)}" for name, r in PLAIN.items())
        own += f"; with the other optimizer: {plain}"
    scaled = " x global batch / 256" if setting == "lr" else ""
    return f"Default: the backbone family's recipe ({own}){scaled}."


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
    """Weights of convolutions and linear layers decay (and get LARS' trust ratio); biases, norms and what a module
    names in `no_weight_decay()` do not."""
    exempt = {id(m.get_parameter(name)) for m in model.modules() if hasattr(m, "no_weight_decay")
              for name in m.no_weight_decay() if _has_parameter(m, name)}
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 and id(p) not in exempt else plain).append(p)
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


def _has_parameter(module: nn.Module, name: str) -> bool:
    try:
        module.get_parameter(name)
        return True
    except AttributeError:
        return False


def default_warmup(total: int) -> int:
    """The warm-up when none is given: a tenth of the steps, at least one."""
    return max(1, total // 10)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """The schedule above."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
