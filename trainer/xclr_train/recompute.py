"""--grad-checkpointing: the backbone keeps the inputs of a few segments in the forward pass and recomputes each
segment's activations in the backward pass (torch.utils.checkpoint, non-reentrant), so its activation memory is
about one segment's plus the segment inputs, for a second forward of the checkpointed segments.

    timm models    timm's `set_grad_checkpointing()`: the segments the model defines (a ViT's blocks, a timm
                   ResNet's or ConvNeXt's blocks); a model without it is a one-line error
    torchvision    each ResNet stage layer1 .. layer4 is one segment (the stem, pooling and head run as usual)
    convnet        its four stages, each from one convolution to the next

The projection head and the momentum target network are not checkpointed (the head is small; the target network
runs without autograd).

BatchNorm. A recomputed forward would update a BatchNorm's running statistics a second time (torch and timm leave
that to the user: pytorch/pytorch#96136). Every BatchNorm of the backbone gets hooks (`_OneUpdate`) that, when it
runs inside a backward pass (where a forward runs only to recompute), leave its running statistics and batch count
as the first forward left them; the recomputation normalises by the batch's statistics, as the first forward did. A
checkpointed run's losses, gradients, weights and running statistics then equal the plain run's.

State dict keys do not change: a checkpointed segment holds the same modules under the same names, so checkpoints,
resumes and exports are those of a plain run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from xclr_train.models import Encoder, ModelError, library

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


class Segments(nn.Sequential):
    """The modules of `modules`, under the same names; while autograd records, each segment of them, from one of
    `starts` (indices, the first 0) to the next, runs under torch.utils.checkpoint: only its input is kept, and the
    backward pass runs it again. Without autograd (evaluation, export) it is the plain nn.Sequential."""

    def __init__(self, modules: nn.Sequential, starts: tuple[int, ...]) -> None:
        if not starts or starts[0] != 0:
            raise ValueError(f"segments must start at module 0, not at {starts}")
        super().__init__(OrderedDict(modules.named_children()))
        self.starts = starts

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        for start, stop in zip(self.starts, (*self.starts[1:], len(self))):
            x = checkpoint(self._segment, start, stop, x, use_reentrant=False)
        return x

    def _segment(self, start: int, stop: int, x: Tensor) -> Tensor:
        for module in list(self._modules.values())[start:stop]:
            x = module(x)
        return x


def recompute_in_backward(encoder: Encoder) -> None:
    """Turn on --grad-checkpointing in `encoder`'s backbone, in place (module docstring): its segments by the
    backbone's library, and the BatchNorm hooks. ModelError for a timm model that has no gradient checkpointing."""
    encoder.backbone = _SEGMENTERS[library(encoder.config.arch)](encoder.backbone, encoder.config.arch)
    for module in encoder.backbone.modules():
        if isinstance(module, _BatchNorm):
            hooks = _OneUpdate()
            module.register_forward_pre_hook(hooks.before)
            module.register_forward_hook(hooks.after, always_call=True)


def _timm_segments(backbone: nn.Module, arch: str) -> nn.Module:
    try:
        backbone.set_grad_checkpointing(True)
    except (AttributeError, AssertionError, NotImplementedError):  # timm's way to say a model has none
        raise ModelError(f"--grad-checkpointing: timm's {arch} has no gradient checkpointing") from None
    return backbone


def _resnet_segments(backbone: nn.Module, arch: str) -> nn.Module:
    for stage in RESNET_STAGES:
        setattr(backbone, stage, Segments(getattr(backbone, stage), (0,)))
    return backbone


def _convnet_segments(backbone: nn.Module, arch: str) -> nn.Module:
    return Segments(backbone, tuple(i for i, m in enumerate(backbone) if isinstance(m, nn.Conv2d)))


_SEGMENTERS: dict[str, Callable[[nn.Module, str], nn.Module]] = {
    "timm": _timm_segments, "torchvision": _resnet_segments, "xclr": _convnet_segments}


def _recomputing(module: _BatchNorm) -> bool:
    """Whether `module` runs in training mode inside a backward pass, i.e. in a checkpoint's recomputation (the
    autograd engine has a current graph task only while it runs a backward; torch's checkpoint keys its
    recomputations by that task). Under torch.compile the compiled backward recomputes without running hooks."""
    return (not torch.compiler.is_compiling() and module.training and module.track_running_stats
            and torch._C._current_graph_task_id() != -1)


class _OneUpdate:
    """The hooks of one BatchNorm that keep its running statistics and batch count from moving in a recomputation.
    The recomputation runs the same operation as the first forward (torch's checkpoint checks that it saves the
    same tensors), with momentum 0: running <- 1 x running + 0 x batch statistic, the same values; the batch count
    it adds is taken back after."""

    def __init__(self) -> None:
        self.momentum: tuple[float | None] | None = None  # (the module's momentum) while a recomputation runs

    def before(self, module: _BatchNorm, args: tuple) -> None:
        if _recomputing(module):
            self.momentum, module.momentum = (module.momentum,), 0.0

    def after(self, module: _BatchNorm, args: tuple, output: Tensor) -> None:
        if self.momentum is not None:
            (module.momentum,), self.momentum = self.momentum, None
            module.num_batches_tracked.sub_(1)
