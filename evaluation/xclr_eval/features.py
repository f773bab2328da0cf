"""Backbone features of a trained encoder (before the projection head), as the evaluation protocol uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xclr_train.augment import eval_transform
from xclr_train.checkpoint import read_checkpoint, read_encoder
from xclr_train.data import decode_image
from xclr_train.models import Encoder


def load_encoder(path: Path) -> tuple[Encoder, dict]:
    """(the encoder of checkpoint `path` in eval mode, the checkpoint minus its weights and optimizer state)."""
    state = read_checkpoint(path)
    info = {k: v for k, v in state.items() if k not in ("model", "optimizer", "scaler")}
    return read_encoder(path, state), info


@torch.no_grad()
def extract_features(model: Encoder, images: list, image_size: int, device: torch.device,
                     batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (n_ok, feature_dim), ok bool (n,)): images that do not decode are left out, ok False."""
    transform = eval_transform(image_size)
    model = model.to(device)
    features, ok = [], np.zeros(len(images), dtype=bool)
    for start in range(0, len(images), batch_size):
        batch = []
        for i in range(start, min(start + batch_size, len(images))):
            image = decode(images[i])
            if image is not None:
                batch.append(transform(image))
                ok[i] = True
        if batch:
            features.append(model.features(torch.stack(batch).to(device)).float().cpu().numpy())
    dim = model.feature_dim
    return (np.concatenate(features) if features else np.zeros((0, dim), np.float32)), ok


def decode(image: bytes | np.ndarray) -> Image.Image | None:
    """An eval-set image (encoded bytes or a uint8 array) as RGB, None when it does not decode."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    return decode_image(image)
