"""open_clip checkpoints in `xclr-eval`: the image tower of a CLIP that open_clip's trainer (`open_clip_train.main`)
wrote, evaluated under the protocol of xclr's checkpoints, without importing open_clip.

Which checkpoint is open_clip's: one at RUN/checkpoints/NAME.pt (a local path) whose run directory RUN holds
`open_clip_config.json`, the model config open_clip trained with (`--model local-dir:RUN`, as
benchmarks/openclip_clip.py runs it; {"model_cfg": ..., "preprocess_cfg": ...}). Every other checkpoint is read as
xclr's.

The features are the image tower's trunk output before open_clip's projection, as xclr's are the backbone's output
before the projection head: the vision tower must be a timm model (`vision_cfg.timm_model_name`) whose trunk pools
its own output (`timm_pool` "avg", or "" for the model's own pooling), built here by `xclr_train.models` and given
the checkpoint's `visual.trunk.*` weights strictly (every weight, no other, each of its shape). Images are prepared
as for xclr's checkpoints (`xclr_train.eval_features`) at `vision_cfg.image_size`, and normalised with the
`preprocess_cfg` mean and std the model was trained with (open_clip's defaults, OpenAI's, where it names none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from xclr_eval.errors import EvalError
from xclr_eval.naming import run_dir
from xclr_train.augment import MEAN, STD
from xclr_train.errors import TrainError, first_line
from xclr_train.models import TIMM_PREFIX, ModelConfig, build_backbone

CONFIG = "open_clip_config.json"
TRUNK = "visual.trunk."
OWN_POOLING = ("avg", "")  # timm_pool values whose trunk output is the pooled features
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's PreprocessCfg defaults
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def config_of(checkpoint: Path) -> Path | None:
    """RUN/open_clip_config.json for a checkpoint RUN/checkpoints/NAME.pt when that file exists, else None."""
    run = run_dir(str(checkpoint))
    config = None if run is None else Path(run) / CONFIG
    return config if config is not None and config.is_file() else None


class OpenClipTrunk(nn.Module):
    """open_clip's image trunk as xclr-eval runs a backbone: `features` takes images normalised by xclr's MEAN and
    STD (`xclr_train.eval_features.features`) and gives the trunk the images normalised by the model's own `mean`
    and `std`: x * STD / std + (MEAN - mean) / std."""

    def __init__(self, trunk: nn.Module, feature_dim: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.trunk, self.feature_dim = trunk, feature_dim
        ours, theirs = torch.tensor([MEAN, STD]), torch.tensor([mean, std], dtype=torch.float32)
        self.register_buffer("scale", (ours[1] / theirs[1])[:, None, None])
        self.register_buffer("shift", ((ours[0] - theirs[0]) / theirs[1])[:, None, None])

    def features(self, images: Tensor) -> Tensor:
        """Trunk features (B, feature_dim) of images normalised by xclr's MEAN and STD."""
        return self.trunk(images * self.scale + self.shift)


def load_openclip(path: Path, config: Path) -> tuple[OpenClipTrunk, dict]:
    """(the image trunk of open_clip checkpoint `path` in eval mode, as `xclr_eval.features.load_encoder` gives an
    xclr encoder: {"config": {"loss": "open_clip", "arch", "image_size", "open_clip": the config file's content},
    "epoch": epochs finished, "step": None (open_clip keeps no step count)}); EvalError in one line for a checkpoint
    or config that is damaged, foreign or not of this form."""
    cfg = _read_config(config)
    vision = cfg["model_cfg"]["vision_cfg"]
    saved = _read_saved(path)
    arch, size = TIMM_PREFIX + vision["timm_model_name"], vision.get("image_size", 224)
    try:
        trunk, dim = build_backbone(ModelConfig(arch, size, proj_hidden=0, proj_dim=0))  # the head is not built
    except TrainError as exc:
        raise EvalError(f"{config}: {exc}") from None
    _load_strictly(trunk, saved.trunk, path, vision["timm_model_name"])
    pre = cfg.get("preprocess_cfg", {})
    model = OpenClipTrunk(trunk, dim, tuple(pre.get("mean", OPENAI_MEAN)), tuple(pre.get("std", OPENAI_STD)))
    info = {"config": {"loss": "open_clip", "arch": arch, "image_size": size, "open_clip": cfg},
            "epoch": saved.epoch, "step": None}
    return model.eval(), info


def _read_config(config: Path) -> dict:
    """The config file's content, checked to have a timm vision tower that pools its own output."""
    try:
        cfg = json.loads(config.read_text())
        vision = cfg["model_cfg"]["vision_cfg"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvalError(f"{config} is not an open_clip model config ({type(exc).__name__}: {first_line(exc)})") \
            from None
    if "timm_model_name" not in vision:
        raise EvalError(f"{config}: xclr-eval reads open_clip image towers of timm models only (no "
                        "vision_cfg.timm_model_name)")
    if vision.get("timm_pool", "avg") not in OWN_POOLING:
        raise EvalError(f"{config}: timm_pool {vision['timm_pool']!r} pools after the trunk; xclr-eval reads trunks "
                        f"that pool their own output (timm_pool {' or '.join(map(repr, OWN_POOLING))})")
    return cfg


@dataclass(frozen=True)
class Saved:
    """What an open_clip checkpoint gives: its `visual.trunk.*` weights (less that prefix and DDP's `module.`) and
    the epochs it finished."""

    trunk: dict[str, Tensor]
    epoch: int | None


def _read_saved(path: Path) -> Saved:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a missing, damaged or foreign file
        raise EvalError(f"{path} is not a readable open_clip checkpoint: damaged, cut short or another kind of file "
                        f"({type(exc).__name__}: {first_line(exc).split('. ')[0]})") from None
    weights = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    names = {k.removeprefix("module."): k for k in weights if isinstance(k, str)} if isinstance(weights, dict) else {}
    trunk = {name[len(TRUNK):]: weights[key] for name, key in names.items() if name.startswith(TRUNK)}
    if not trunk:
        raise EvalError(f"{path} is not an open_clip checkpoint of a timm image tower (no state_dict with "
                        f"{TRUNK}* weights) although {CONFIG} lies in its run directory")
    return Saved(trunk, checkpoint.get("epoch"))


def _load_strictly(trunk: nn.Module, weights: dict[str, Tensor], path: Path, name: str) -> None:
    """Every weight of `trunk` from `weights`, which must hold exactly those, each of its shape."""
    own = trunk.state_dict()
    missing, unknown = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unknown or shapes:
        raise EvalError(f"{path} does not hold the image trunk of timm's {name}: {len(missing)} of its weights "
                        f"missing {missing[:3]}, {len(unknown)} unknown {unknown[:3]}, {len(shapes)} of another "
                        f"shape {shapes[:3]}")
    trunk.load_state_dict(weights)
