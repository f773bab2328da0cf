"""Image encoders: a torchvision ResNet backbone and a projection MLP head (SimCLR v2 style)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision import models

SMALL_IMAGE_MAX = 64  # inputs up to this size get the small-image stem


def _resnet(constructor):
    def build(small_stem: bool) -> tuple[nn.Module, int]:
        net = constructor(weights=None)
        if small_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, feature_dim
    return build


def _convnet(small_stem: bool) -> tuple[nn.Module, int]:
    """A small CNN for CPU studies at 28-32 px: four 3x3 conv-BN-ReLU layers (32, 64, 128, 256 channels) with
    2x2 max-pooling between them, then global average pooling; 0.4M parameters and about 1/35 of a small-stem
    ResNet-18's multiply-adds. It has no stem to change (`small_stem` is ignored)."""
    layers: list[nn.Module] = []
    channels_in = 3
    for stage, channels in enumerate((32, 64, 128, 256)):
        if stage:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.Conv2d(channels_in, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                   nn.ReLU(inplace=True)]
        channels_in = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), channels_in


ARCHS = {"resnet50": _resnet(models.resnet50), "resnet18": _resnet(models.resnet18), "convnet": _convnet}


class Encoder(nn.Module):
    """backbone (ResNet without its classifier, or `convnet`) -> head Linear-BN-ReLU-Linear.

    With `small_stem` (chosen by `model_config` for images of at most 64 px) a ResNet's stem is a 3x3 stride-1
    convolution without max-pooling (SimCLR's CIFAR variant), so that a 28-32 px image is not reduced to 1x1
    before the last stage.
    """

    def __init__(self, arch: str, small_stem: bool, proj_hidden: int, proj_dim: int) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")
        self.backbone, self.feature_dim = ARCHS[arch](small_stem)
        self.head = nn.Sequential(
            nn.Linear(self.feature_dim, proj_hidden, bias=False),
            nn.BatchNorm1d(proj_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(proj_hidden, proj_dim),
        )

    def features(self, images: Tensor) -> Tensor:
        """Backbone features (what evaluation uses), shape (B, feature_dim)."""
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tensor:
        """Projections (what the loss sees), shape (B, proj_dim)."""
        return self.head(self.backbone(images))


def model_config(arch: str, image_size: int, proj_hidden: int, proj_dim: int) -> dict:
    """`Encoder` arguments; a checkpoint stores them and only loads into a model built from equal ones."""
    return {"arch": arch, "small_stem": image_size <= SMALL_IMAGE_MAX, "proj_hidden": proj_hidden,
            "proj_dim": proj_dim}


def use_sync_batchnorm(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """SyncBatchNorm across ranks on GPUs (BN statistics of the global batch); torch has no CPU version, so CPU
    ranks keep per-rank statistics."""
    if world_size > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
