"""The training views, one recipe for every loss so that methods compare fairly (`AUGMENTS`, `--augment`), and the
deterministic view that evaluation uses.

  simclr  SimCLR's augmentations (Chen et al. 2020, appendix A): crop, flip, colour jitter, grayscale, blur
  crop    RandomResizedCrop(0.2-1) + flip, no photometric change: the lighter recipe of CLIP-style training. With
          colours left intact, two views share their colour histogram and instance discrimination can stop there
          (on the emoji study it costs SimCLR and X-CLR 6-7 points of kNN: docs/emoji-study.md)
"""

from __future__ import annotations

from typing import Callable

from PIL import Image
from torchvision import transforms as T

# ImageNet statistics, as torchvision's ResNets expect.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def simclr_transform(image_size: int) -> T.Compose:
    """RandomResizedCrop(0.08-1) -> flip -> colour jitter (0.4, 0.4, 0.4, 0.1; p 0.8) -> grayscale (p 0.2) ->
    Gaussian blur (kernel ~ 10% of the size, sigma 0.1-2; p 0.5) -> tensor -> normalise."""
    kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.08, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


def crop_transform(image_size: int) -> T.Compose:
    """RandomResizedCrop(0.2-1; MoCo's lower bound) -> flip -> tensor -> normalise."""
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.2, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


AUGMENTS: dict[str, Callable[[int], T.Compose]] = {"simclr": simclr_transform, "crop": crop_transform}


def eval_transform(image_size: int) -> T.Compose:
    """Evaluation view: resize the shorter side to `image_size` -> centre crop -> tensor -> normalise."""
    return T.Compose([
        T.Resize(image_size, antialias=True),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (clip-art stamps are mostly transparent)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
