"""Backbone features of a trained encoder (before the projection head), as the evaluation protocol uses them
(`xclr_train.eval_features`, shared with the trainer's in-run evaluation); an open_clip checkpoint's image trunk is
read by `xclr_eval.openclip` and evaluated the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from xclr_eval.openclip import OpenClipTrunk, config_of, load_openclip
from xclr_train.checkpoint import read_checkpoint, read_encoder
from xclr_train.eval_features import EVAL_BATCH, features, view_batches
from xclr_train.models import Encoder


def load_encoder(path: Path) -> tuple[Encoder | OpenClipTrunk, dict]:
    """(the encoder of checkpoint `path` in eval mode, the checkpoint minus its weights and optimizer state); an
    open_clip checkpoint (`xclr_eval.openclip.config_of`) gives its image trunk and `load_openclip`'s info."""
    openclip_config = config_of(path)
    if openclip_config is not None:
        return load_openclip(path, openclip_config)
    state = read_checkpoint(path)
    info = {k: v for k, v in state.items() if k not in ("model", "optimizer", "scaler")}
    return read_encoder(path, state), info


def extract_features(model: Encoder | OpenClipTrunk, images: list, image_size: int, device: torch.device,
                     batch_size: int = EVAL_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (n_ok, feature_dim), ok bool (n,)): images that do not decode are left out, ok False."""
    model = model.to(device)
    found, ok = [], []
    for views, decoded in view_batches(images, image_size, batch_size):
        found.append(features(model, views, device).cpu().numpy())
        ok.append(decoded)
    if not found:
        return np.zeros((0, model.feature_dim), np.float32), np.zeros(0, dtype=bool)
    return np.concatenate(found), np.concatenate(ok)
