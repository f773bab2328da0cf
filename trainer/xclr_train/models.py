"""Image encoders: a torchvision ResNet backbone and a projection MLP head (SimCLR v2 style)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision import models

ARCHS = {"resnet50": models.resnet50, "resnet18": models.resnet18}
SMALL_IMAGE_MAX = 64  # inputs up to this size get the small-image stem


class Encoder(nn.Module):
    """backbone (ResNet without its classifier) -> head Linear-BN-ReLU-Linear.

    With `small_stem` (chosen by `model_config` for images of at most 64 px) the stem is a 3x3 stride-1
    convolution without max-pooling (SimCLR's CIFAR variant), so that a 28-32 px image is not reduced to 1x1
    before the last stage.
    """

    def __init__(self, arch: str, small_stem: bool, proj_hidden: int, proj_dim: int) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")
        self.backbone = ARCHS[arch](weights=None)
        if small_stem:
            self.backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.backbone.maxpool = nn.Identity()
        self.feature_dim = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
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
