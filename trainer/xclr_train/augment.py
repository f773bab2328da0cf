"""The training views, one recipe for every loss so that methods compare fairly (`RECIPES`, `--augment`), and the
deterministic view that evaluation uses.

  simclr  SimCLR's augmentations (Chen et al. 2020, appendix A): RandomResizedCrop(0.08-1), flip, colour jitter
          (brightness, contrast, saturation 0.4, hue 0.1, in random order; p 0.8), grayscale (p 0.2), Gaussian
          blur (sigma 0.1-2, kernel ~ 10% of the size; p 0.5)
  crop    RandomResizedCrop(0.2-1) + flip, no photometric change: the lighter recipe of CLIP-style training. With
          colours left intact, two views share their colour histogram and instance discrimination can stop there
          (on the emoji study it costs SimCLR and X-CLR 6-7 points of kNN: docs/emoji-study.md)

A view is made in two halves. The DataLoader worker cuts it (`crop_view`: crop, resize, flip on the decoded image,
one PIL resize) as a uint8 tensor, drawing from its stream's RNG, seeded per (seed, epoch, rank, worker)
(`xclr_train.data`). The trainer draws the photometric parameters of every view of a step (`draw_photometric`, each
view its own) from a generator seeded by (seed, rank, step) (`step_generator`), and the training device applies them
to the whole batch at once (`xclr_train.photometric`). Both replay exactly on resume.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# ImageNet statistics, as torchvision's ResNets expect.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # the colour-jitter ops, as Photometric.order lists them


@dataclass(frozen=True)
class Recipe:
    """One --augment choice: the crop's area range, then each photometric op's probability and range."""
    scale: tuple[float, float]
    jitter_p: float = 0.0
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brightness, contrast, saturation, hue
    gray_p: float = 0.0
    blur_p: float = 0.0
    sigma: tuple[float, float] = (0.1, 2.0)


RECIPES = {
    "simclr": Recipe(scale=(0.08, 1.0), jitter_p=0.8, jitter=(0.4, 0.4, 0.4, 0.1), gray_p=0.2, blur_p=0.5),
    "crop": Recipe(scale=(0.2, 1.0)),  # MoCo's lower bound
}


class Photometric(NamedTuple):
    """Photometric parameters of N views; a view that did not draw an op holds its identity value."""
    brightness: Tensor  # (N,) factors, 1: unchanged
    contrast: Tensor  # (N,)
    saturation: Tensor  # (N,)
    hue: Tensor  # (N,) turns, 0: unchanged
    order: Tensor  # (N, 4) long: the jitter ops' order, a permutation of BRIGHTNESS .. HUE
    gray: Tensor  # (N,) bool
    sigma: Tensor  # (N,) blur sigma, 0: no blur
    hue_at: tuple[Tensor, ...]  # per jitter position, the views whose hue op is there (long, sizes known on the host)

    def to(self, device: torch.device, non_blocking: bool = False) -> Photometric:
        return Photometric(*(t.to(device, non_blocking=non_blocking) for t in self[:-1]),
                           tuple(t.to(device, non_blocking=non_blocking) for t in self.hue_at))


def derived_seed(name: str) -> int:
    """A torch seed from a stream's name (every character counts: SHA-256, first 63 bits)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") % 2**63


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The CPU generator of one step's photometric parameters on one rank."""
    return torch.Generator().manual_seed(derived_seed(f"xclr/photometric/{seed}/{rank}/{step}"))


def draw_photometric(n: int, recipe: Recipe, generator: torch.Generator) -> Photometric:
    """Independent parameters for n views: jitter with probability jitter_p, then factors uniform in
    [1 - strength, 1 + strength] (hue in [-strength, strength]) and a random order; grayscale with probability
    gray_p; blur with probability blur_p, sigma uniform in `sigma`."""
    def uniform(low: float, high: float) -> Tensor:
        return torch.empty(n).uniform_(low, high, generator=generator)

    on = uniform(0, 1) < recipe.jitter_p
    b, c, s = (torch.where(on, uniform(1 - x, 1 + x), 1.0) for x in recipe.jitter[:3])
    hue = torch.where(on, uniform(-recipe.jitter[3], recipe.jitter[3]), 0.0)
    order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)
    gray = uniform(0, 1) < recipe.gray_p
    sigma = torch.where(uniform(0, 1) < recipe.blur_p, uniform(*recipe.sigma), 0.0)
    hue_at = tuple(torch.nonzero(on & (order[:, k] == HUE)).flatten() for k in range(4))
    return Photometric(b, c, s, hue, order, gray, sigma, hue_at)


def crop_box(width: int, height: int, scale: tuple[float, float], rng: random.Random) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (left, top, w, h): up to ten draws of an area fraction uniform in `scale` and a log
    aspect ratio uniform in log RATIO, the first that fits placed uniformly; else the whole image, cut to the
    nearest ratio in RATIO and centred."""
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    w, h = min(width, round(height * RATIO[1])), min(height, round(width / RATIO[0]))
    return (width - w) // 2, (height - h) // 2, w, h


def crop_view(image: Image.Image, size: int, recipe: Recipe, rng: random.Random) -> Tensor:
    """A `crop_box` resized to size x size in one bilinear PIL resize, flipped with probability 1/2:
    uint8 (3, size, size)."""
    left, top, w, h = crop_box(*image.size, recipe.scale, rng)
    view = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(view)).permute(2, 0, 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (clip-art stamps are mostly transparent)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
