"""Image encoders: a backbone named by a string (as timm names its models) and a projection MLP head (SimCLR v2).

--arch names a backbone:

    resnet50, resnet18   torchvision's ResNets (resnet50 is the paper's); images of at most 64 px get SimCLR's CIFAR
                         stem (a 3x3 stride-1 convolution, no max-pooling), so 32 px is not reduced to 1x1
    convnet              a small CNN for CPU studies at 28-32 px (`_convnet`)
    NAME or timm:NAME    any timm model (vit_small_patch16_224, convnext_tiny, ...; the prefix picks timm's model where
                         a name is also one of the above: timm:resnet50). Built with num_classes=0, so its output is
                         forward_head(pre_logits=True): the cls token or the average pool, as the model defines them.
                         A model that takes img_size gets --image-size, and --patch-size where given.

A backbone's family picks its training recipe (`xclr_train.optim.FAMILY_RECIPES`): "batchnorm" when it has BatchNorm
layers (ResNets), "layernorm" otherwise (ViTs, ConvNeXt).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models

from xclr_train.errors import TrainError, first_line

SMALL_IMAGE_MAX = 64  # torchvision ResNets get the small-image stem up to this size
TORCHVISION = {"resnet50": models.resnet50, "resnet18": models.resnet18}
CONVNET = "convnet"
TIMM_PREFIX = "timm:"


class ModelError(TrainError):
    """An --arch, --patch-size or --init that cannot make a backbone (the message is one line, for the user)."""


@dataclass(frozen=True)
class ModelConfig:
    """What builds an `Encoder`; a checkpoint stores it (as a dict) and loads only into a model built from an equal
    one. `patch_size` None: the model's own."""
    arch: str
    image_size: int
    proj_hidden: int
    proj_dim: int
    patch_size: int | None = None


def timm_name(arch: str) -> str | None:
    """The timm model that --arch names, or None for torchvision's ResNets and `convnet`."""
    if arch.startswith(TIMM_PREFIX):
        return arch[len(TIMM_PREFIX):]
    return None if arch in TORCHVISION or arch == CONVNET else arch


def library(arch: str) -> str:
    """Where the backbone's code lives: "timm", "xclr" (convnet) or "torchvision"."""
    if timm_name(arch) is not None:
        return "timm"
    return "xclr" if arch == CONVNET else "torchvision"


def check_arch(arch: str) -> None:
    """ModelError unless --arch names a backbone (see the module docstring)."""
    name = timm_name(arch)
    if name is None:
        return
    import timm

    if not timm.is_model(name):
        raise ModelError(f"unknown --arch {arch!r}: not {', '.join([*TORCHVISION, CONVNET])} nor a timm model "
                         f"(timm.list_models() lists them)")


def build_backbone(config: ModelConfig, init: Path | None = None) -> tuple[nn.Module, int]:
    """(the backbone without a classifier, its feature size), with the weights of the file `init` (safetensors or a
    torch state dict, e.g. an `xclr-export` model.safetensors) or randomly initialised."""
    check_arch(config.arch)
    name = timm_name(config.arch)
    if name is not None:
        return _timm(name, config.image_size, config.patch_size, init)
    if config.patch_size is not None:
        raise ModelError(f"--patch-size: {config.arch} has no patches")
    net, dim = _convnet() if config.arch == CONVNET else _resnet(config.arch, config.image_size <= SMALL_IMAGE_MAX)
    if init is not None:
        state = read_weights(init)
        _check_fit(net, set(state), ("fc",), init, config.arch)
        try:
            net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
        except RuntimeError as exc:  # a weight of another shape
            raise ModelError(f"--init {init} does not fit {config.arch}: {_load_error(exc)}") from None
    return net, dim


def read_weights(path: Path) -> dict[str, Tensor]:
    """A state dict from a .safetensors file or a torch file (weights only); ModelError when it is neither."""
    from safetensors.torch import load_file

    try:
        return load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                              weights_only=True)
    except Exception as exc:  # safetensors and torch raise many types for a missing, damaged or foreign file
        raise ModelError(f"cannot read weights from {path} ({type(exc).__name__}: {first_line(exc)})") from None


def _resnet(arch: str, small_stem: bool) -> tuple[nn.Module, int]:
    net = TORCHVISION[arch](weights=None)
    if small_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim


def _convnet() -> tuple[nn.Module, int]:
    """A small CNN for CPU studies at 28-32 px: four 3x3 conv-BN-ReLU layers (32, 64, 128, 256 channels) with
    2x2 max-pooling between them, then global average pooling; 0.4M parameters and about 1/35 of a small-stem
    ResNet-18's multiply-adds."""
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


def _timm(name: str, image_size: int, patch_size: int | None, init: Path | None) -> tuple[nn.Module, int]:
    """timm's `name` with num_classes=0; img_size=image_size when the model takes it (its constructor names it).
    `init` goes through timm's loader (which adapts a position embedding to the image size) and must hold every
    weight of the model and nothing else but a classifier: timm itself only logs what it leaves out."""

    kwargs: dict = {"num_classes": 0, "img_size": image_size}
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    if init is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(init)})
        given = set(read_weights(init))
    try:
        with _quiet("timm"):  # its loader logs what it leaves out; that is checked below and said in one line
            net = _create_timm(name, kwargs)
    except TypeError as exc:
        if "patch_size" not in str(exc):
            raise
        raise ModelError(f"--patch-size: timm's {name} has no patches") from None
    except RuntimeError as exc:  # timm's loader: a weight of another shape
        raise ModelError(f"--init {init} does not fit {name}: {_load_error(exc)}") from None
    if init is not None:
        classifiers = net.pretrained_cfg.get("classifier") or ()
        _check_fit(net, given, (classifiers,) if isinstance(classifiers, str) else tuple(classifiers), init, name)
    return net, net.num_features


def _create_timm(name: str, kwargs: dict) -> nn.Module:
    """timm.create_model, without img_size for a model whose constructor has none (a convnet takes any size)."""
    import timm

    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(name, **{k: v for k, v in kwargs.items() if k != "img_size"})


def _check_fit(net: nn.Module, given: set[str], classifiers: tuple[str, ...], init: Path, name: str) -> None:
    """ModelError unless the weight names `given` are the model's, less nothing and plus at most a classifier's."""
    missing = sorted(set(net.state_dict()) - given)
    unexpected = sorted(k for k in given - set(net.state_dict()) if k.split(".")[0] not in classifiers)
    if missing or unexpected:
        raise ModelError(f"--init {init} does not fit {name}: {len(missing)} of its weights missing "
                         f"{missing[:3]}, {len(unexpected)} unknown {unexpected[:3]}")


def _load_error(exc: RuntimeError) -> str:
    """The first specific line of torch's load_state_dict error (its first line only names the module)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("size mismatch")), lines[0] if lines else "")


@contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def family(backbone: nn.Module) -> str:
    """The backbone's family: batchnorm when it has BatchNorm layers, else layernorm (see the module docstring)."""
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)
    return "batchnorm" if any(isinstance(m, norms) for m in backbone.modules()) else "layernorm"


class Encoder(nn.Module):
    """backbone -> head Linear-BN-ReLU-Linear (no BatchNorm on the last layer, for every family)."""

    def __init__(self, config: ModelConfig, init: Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone, self.feature_dim = build_backbone(config, init)
        self.head = nn.Sequential(
            nn.Linear(self.feature_dim, config.proj_hidden, bias=False),
            nn.BatchNorm1d(config.proj_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.proj_hidden, config.proj_dim),
        )

    def features(self, images: Tensor) -> Tensor:
        """Backbone features (what evaluation and export use), shape (B, feature_dim)."""
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tensor:
        """Projections (what the loss sees), shape (B, proj_dim)."""
        return self.head(self.backbone(images))


class Learner(nn.Module):
    """What the optimizer trains and DDP wraps: the encoder, with `predictor_hidden` a predictor head
    Linear-BN-ReLU-Linear (proj_dim -> hidden -> proj_dim), and with `scalars` (name -> initial value) the loss's
    learned scalars, 0-d parameters that forward() does not use (the objective's loss does; no weight decay).
    forward(images) -> (projections, predictions or None)."""

    def __init__(self, encoder: Encoder, proj_dim: int, predictor_hidden: int | None,
                 scalars: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = None if predictor_hidden is None else nn.Sequential(
            nn.Linear(proj_dim, predictor_hidden, bias=False), nn.BatchNorm1d(predictor_hidden),
            nn.ReLU(inplace=True), nn.Linear(predictor_hidden, proj_dim))
        self.scalars = nn.ParameterDict({name: nn.Parameter(torch.tensor(float(value)))
                                         for name, value in scalars.items()}) if scalars else None

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        z = self.encoder(images)
        return z, None if self.predictor is None else self.predictor(z)


def use_sync_batchnorm(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """SyncBatchNorm across ranks on GPUs (BN statistics of the global batch); torch has no CPU version, so CPU
    ranks keep per-rank statistics."""
    if world_size > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
