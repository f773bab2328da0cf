"""What the two-pass step of --micro-batch N uses (GradCache: Gao et al. 2021, "Scaling Deep Contrastive Learning
Batch Size under Memory Limited Setup"); `xclr_train.step.Stepper` runs it.

The rank's images are [view 1; view 2] of B samples. Chunk c holds the view-1 and view-2 images of samples
cN .. cN+N-1 (`sample_chunks`), so a BatchNorm's statistics see both views, as in the whole step.

    pass 1   every chunk through `Objective.views` without autograd: z, p (and the target network's t) of chunk c;
             the RNG state before each chunk is kept (`RandomState`) and the learner's buffers are put back after
             the pass, so that the running statistics of a BatchNorm move once per chunk, in pass 2
    loss     the objective's rows on the whole batch's outputs, each a leaf tensor (`leaves`): L (scaled by the grad
             scaler), g = dL/d(z1, z2, p1, p2) and dL/d(the learned scalars) (`CachedGradients`)
    pass 2   every chunk again through `Objective.online_views` with autograd, replaying its RNG state, then
             backward(outputs_c, g_c); the last chunk also backpropagates the scalars' gradients

By the chain rule sum_c (d outputs_c / d theta)^T g_c = dL/d theta, so the parameter gradients are those of the
whole step wherever the outputs of chunk c in pass 2 equal the whole step's rows of chunk c: when the learner and
the target network compute each sample's outputs from that sample alone (no batch statistics: a ViT's LayerNorm, a
BatchNorm in eval mode) and draw their random numbers alike. A BatchNorm in training mode normalises by the chunk's
statistics instead, as it does by the rank's under DDP without SyncBatchNorm.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from xclr_train.objectives import Views

ONLINE = ("z1", "z2", "p1", "p2")  # the Views fields that Objective.online_views fills: the loss's leaves


def sample_chunks(images: Tensor, n: int) -> list[Tensor]:
    """images = [view 1; view 2] (2B, ...) -> B / n chunks [view 1 of samples cn..cn+n-1; view 2 of the same]."""
    b = len(images) // 2
    return [torch.cat([images[start:start + n], images[b + start:b + start + n]]) for start in range(0, b, n)]


def join(parts: list[Views]) -> Views:
    """The chunks' Views as one, each field the concatenation of the chunks' (in sample order)."""
    return Views(**{f.name: None if getattr(parts[0], f.name) is None else
                    torch.cat([getattr(part, f.name) for part in parts]) for f in fields(Views)})


def leaves(views: Views) -> Views:
    """`views` with each online output a leaf that requires grad (the target network's t1, t2 as they are)."""
    return replace(views, **{name: getattr(views, name).detach().requires_grad_()
                             for name in ONLINE if getattr(views, name) is not None})


def detached(views: Views) -> Views:
    return Views(**{f.name: None if getattr(views, f.name) is None else getattr(views, f.name).detach()
                    for f in fields(Views)})


@dataclass(frozen=True)
class RandomState:
    """The RNG state of the CPU (and of `device` when it is a GPU) at one moment (GradCache's RandContext)."""
    cpu: Tensor
    device: torch.device
    cuda: Tensor | None

    @classmethod
    def now(cls, device: torch.device) -> RandomState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), device, cuda)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Draw from this state inside the block; the state from before the block is back after it."""
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


@contextmanager
def buffers_kept(module: nn.Module) -> Iterator[None]:
    """The module's buffers (BatchNorm running statistics and counts) as they were before the block."""
    saved = [buffer.clone() for buffer in module.buffers()]
    yield
    with torch.no_grad():
        for buffer, value in zip(module.buffers(), saved):
            buffer.copy_(value)


@dataclass(frozen=True)
class CachedGradients:
    """dL/d output for each online output the loss uses ((B, d), by field name; an unused one is left out), and
    (scalar, dL/d scalar) for each learned scalar of the loss; `n` samples per chunk."""
    outputs: dict[str, Tensor]
    scalars: list[tuple[nn.Parameter, Tensor]]
    n: int

    @classmethod
    def of(cls, loss: Tensor, views: Views, scalars: nn.ParameterDict | None, n: int) -> CachedGradients:
        """The gradients of `loss` with respect to the leaves of `views` (`leaves`) and the learner's scalars."""
        names = [name for name in ONLINE if getattr(views, name) is not None]
        params = list(scalars.values()) if scalars is not None else []
        grads = torch.autograd.grad(loss, [getattr(views, name) for name in names] + params, allow_unused=True)
        return cls({name: g for name, g in zip(names, grads) if g is not None},
                   [(p, g) for p, g in zip(params, grads[len(names):]) if g is not None], n)

    def backward(self, c: int, outputs: Views, last: bool) -> None:
        """Backpropagate chunk c's rows of the cached gradients through its `outputs` (computed with autograd);
        with `last`, the scalars' gradients too (inside the backward that DDP reduces)."""
        rows = slice(c * self.n, (c + 1) * self.n)
        roots = [getattr(outputs, name) for name in self.outputs]
        grads = [g[rows] for g in self.outputs.values()]
        if last:
            roots += [p for p, _ in self.scalars]
            grads += [g for _, g in self.scalars]
        torch.autograd.backward(roots, grads)
