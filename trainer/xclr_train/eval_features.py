"""Backbone features of an evaluation set, as `xclr-eval` and the in-run evaluation (`xclr_train.in_run_eval`) both
compute them: each image decoded (`decode`), its shorter side resized to the run's image size (bilinear,
antialiased: PIL's resize) and centre-cropped, as uint8 (`view_batches`); then x / 255 normalised by ImageNet's mean
and std, the arithmetic of torchvision's ToTensor and Normalize, and the encoder's backbone in eval mode, fp32
(`features`).

Images go in batches of `EVAL_BATCH` consecutive images of the set, less those that do not decode, so that both
callers run the backbone on the same batches and get the same features.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T

from xclr_train.augment import MEAN, STD
from xclr_train.data import decode_image
from xclr_train.models import Encoder

EVAL_BATCH = 256  # images per forward pass (xclr-eval --batch-size's default)


def decode(image: bytes | np.ndarray) -> Image.Image | None:
    """An eval-set image (encoded bytes or a uint8 array) as RGB, None when it does not decode."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    return decode_image(image)


def view_batches(images: Sequence, image_size: int,
                 batch_size: int = EVAL_BATCH) -> Iterator[tuple[Tensor, np.ndarray]]:
    """Per run of `batch_size` consecutive images: (uint8 (n_ok, 3, S, S) views of those that decode, ok (n,) bool)."""
    resize = T.Compose([T.Resize(image_size, antialias=True), T.CenterCrop(image_size)])
    for start in range(0, len(images), batch_size):
        decoded = [decode(image) for image in images[start:start + batch_size]]
        views = [torch.from_numpy(np.array(resize(image))).permute(2, 0, 1) for image in decoded if image is not None]
        yield (torch.stack(views) if views else torch.zeros((0, 3, image_size, image_size), dtype=torch.uint8),
               np.array([image is not None for image in decoded]))


@torch.no_grad()
def features(model: Encoder, views: Tensor, device: torch.device) -> Tensor:
    """float32 backbone features (n, feature_dim) on `device` of uint8 views (n, 3, S, S); `model` must be on
    `device` and in eval mode."""
    if not len(views):
        return torch.zeros((0, model.feature_dim), device=device)
    x = views.to(device).float().div_(255)
    x = x.sub_(x.new_tensor(MEAN)[:, None, None]).div_(x.new_tensor(STD)[:, None, None])
    return model.features(x).float()
