"""The training views in their two halves: crops cut in the workers (`augment.crop_view`), photometric parameters
drawn per view (`augment.draw_photometric`) and applied to the whole batch on the device (`photometric`).

The batched ops are checked against torchvision's per-image functional ops with the same parameters; the parameter
draws against the recipe's probabilities and ranges (seeded, with bounds of five binomial standard deviations)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from xclr_train.augment import (
    MEAN,
    RECIPES,
    STD,
    Photometric,
    crop_box,
    crop_view,
    derived_seed,
    draw_photometric,
    step_generator,
)
from xclr_train.photometric import blur, blur_width, photometric

SIMCLR = RECIPES["simclr"]


def torchvision_view(image: torch.Tensor, p: Photometric, i: int) -> torch.Tensor:
    """View i of a batch through torchvision's per-image ops, in the order SimCLR's transform applies them."""
    x = image.float() / 255
    ops = (lambda y: TF.adjust_brightness(y, p.brightness[i].item()),
           lambda y: TF.adjust_contrast(y, p.contrast[i].item()),
           lambda y: TF.adjust_saturation(y, p.saturation[i].item()),
           lambda y: TF.adjust_hue(y, p.hue[i].item()))
    for op in p.order[i].tolist():
        x = ops[op](x)
    if p.gray[i]:
        x = TF.rgb_to_grayscale(x, 3)
    if p.sigma[i] > 0:
        x = TF.gaussian_blur(x, [blur_width(x.shape[-1])] * 2, [p.sigma[i].item()] * 2)
    return TF.normalize(x, MEAN, STD)


@pytest.mark.parametrize("size", [8, 24, 40])
def test_batched_ops_are_torchvisions_per_image_ops(size):
    """Every view of a random uint8 batch, with its own drawn parameters, equals torchvision's colour jitter (in the
    view's order), grayscale, Gaussian blur and normalisation of that one image (float32 rounding apart)."""
    torch.manual_seed(size)
    images = torch.randint(0, 256, (48, 3, size, size), dtype=torch.uint8)
    p = draw_photometric(48, SIMCLR, torch.Generator().manual_seed(size))
    assert p.gray.any() and (~p.gray).any() and (p.sigma > 0).any() and (p.sigma == 0).any()
    out = photometric(images, p, SIMCLR)
    expected = torch.stack([torchvision_view(images[i], p, i) for i in range(48)])
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)


def test_crop_recipe_only_normalises():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out = photometric(images, draw_photometric(4, RECIPES["crop"], torch.Generator()), RECIPES["crop"])
    torch.testing.assert_close(out, TF.normalize(images.float() / 255, MEAN, STD))


def test_each_view_draws_its_own_parameters_from_the_recipe():
    """20,000 draws: probabilities of jitter, grayscale and blur within 5 sd of 0.8, 0.2 and 0.5; factors spread over
    their whole ranges; every order of the four jitter ops occurs about equally; neighbouring views differ."""
    n = 20_000
    p = draw_photometric(n, SIMCLR, torch.Generator().manual_seed(0))

    def near(count, prob):
        return abs(count - n * prob) < 5 * math.sqrt(n * prob * (1 - prob))

    jittered = p.brightness != 1
    assert near(int(jittered.sum()), 0.8) and near(int(p.gray.sum()), 0.2) and near(int((p.sigma > 0).sum()), 0.5)
    assert torch.equal(jittered, p.contrast != 1) and torch.equal(jittered, p.saturation != 1)
    for factor in (p.brightness, p.contrast, p.saturation):
        f = factor[jittered]
        assert 0.6 <= f.min() < 0.61 and 1.39 < f.max() <= 1.4
    assert -0.1 <= p.hue.min() < -0.099 and 0.099 < p.hue.max() <= 0.1 and (p.hue[~jittered] == 0).all()
    sigma = p.sigma[p.sigma > 0]
    assert 0.1 <= sigma.min() < 0.11 and 1.99 < sigma.max() <= 2.0
    orders = Counter(tuple(o) for o in p.order.tolist())
    assert len(orders) == 24 and all(near(c, 1 / 24) for c in orders.values())
    assert all((a != b).any() for a, b in zip(p[:4], (t.roll(1, 0) for t in p[:4])))  # view i vs view i - 1
    hue_at = torch.full((n,), -1)
    for k, views in enumerate(p.hue_at):
        hue_at[views] = k
    assert torch.equal(hue_at, torch.where(jittered, (p.order == 3).long().argmax(1), -1))


def test_a_seed_gives_the_same_crops_and_a_step_the_same_parameters():
    """Crops replay from the stream's RNG; parameters from (seed, rank, step), and differ for another step or
    rank."""
    image = Image.effect_mandelbrot((64, 48), (-2, -1.5, 1, 1.5), 60).convert("RGB")

    def crop():
        return crop_view(image, 16, SIMCLR, random.Random(7))

    assert crop().dtype == torch.uint8 and crop().shape == (3, 16, 16) and torch.equal(crop(), crop())

    def flat(p: Photometric) -> list[torch.Tensor]:
        return [*p[:-1], *p.hue_at]

    def params(seed, rank, step):
        return flat(draw_photometric(8, SIMCLR, step_generator(seed, rank, step)))

    assert all(torch.equal(a, b) for a, b in zip(params(0, 1, 5), params(0, 1, 5), strict=True))
    for other in (params(0, 1, 6), params(0, 2, 5), params(1, 1, 5)):
        assert not torch.equal(params(0, 1, 5)[0], other[0])


def test_every_character_of_a_stream_name_changes_its_seed():
    """The steps' names differ only at the end (xclr/photometric/seed/rank/step); each gets its own seed."""
    names = [f"xclr/photometric/0/{rank}/{step}" for rank in range(4) for step in range(4)]
    assert len({derived_seed(name) for name in names}) == 16 and all(0 <= derived_seed(n) < 2**63 for n in names)


def test_crops_cover_the_recipes_area_range_and_flip_half_the_time():
    """A 200 x 200 image whose red channel is the column and green the row: each crop's extent and direction can be
    read off its pixels. Area fractions span SimCLR's 0.08-1 (crop: 0.2-1), aspect ratios stay in 3/4-4/3."""
    cols, rows = torch.meshgrid(torch.arange(200), torch.arange(200), indexing="xy")
    image = Image.fromarray(torch.stack([cols, rows, torch.zeros_like(cols)], -1).to(torch.uint8).numpy())
    rng = random.Random(0)
    for name, low in (("simclr", 0.08), ("crop", 0.2)):
        areas, flips = [], 0
        for _ in range(400):
            view = crop_view(image, 32, RECIPES[name], rng).long()
            width = (view[0].amax() - view[0].amin() + 1).item()
            height = (view[1].amax() - view[1].amin() + 1).item()
            areas.append(width * height / 200 ** 2)
            assert 3 / 4 - 0.08 < width / height < 4 / 3 + 0.08
            flips += bool(view[0, 16, 0] > view[0, 16, -1])
        assert low - 0.01 < min(areas) < low + 0.05 and max(areas) > 0.9
        assert 150 < flips < 250


@pytest.mark.parametrize("size", [(100, 20), (20, 100), (50, 50)])
def test_a_crop_that_never_fits_falls_back_to_the_centred_image_at_an_allowed_ratio(size):
    """With an area range above the whole image no draw fits: the box is the whole image cut to 3/4-4/3."""
    left, top, w, h = crop_box(*size, (1.5, 2.0), random.Random(0))
    assert (w, h) == {(100, 20): (27, 20), (20, 100): (20, 27), (50, 50): (50, 50)}[size]
    assert (left, top) == ((size[0] - w) // 2, (size[1] - h) // 2)


def test_blur_keeps_a_constant_image_and_a_tiny_sigma_is_the_identity():
    x = torch.rand(3, 3, 20, 20)
    constant = torch.full((2, 3, 20, 20), 0.37)
    torch.testing.assert_close(blur(constant, torch.tensor([0.5, 2.0]), 5), constant, rtol=0, atol=1e-6)
    torch.testing.assert_close(blur(x, torch.tensor([1e-3, 1e-3, 0.0]), 5), x, rtol=0, atol=0)
    assert (blur(x, torch.tensor([1.0, 1.0, 1.0]), 5) - x).abs().max() > 0.1
