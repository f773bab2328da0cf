"""The photometric half of the training views, batched on the training device with every image's own parameters
(`xclr_train.augment.Photometric`, drawn by the trainer for each step): uint8 crops in, normalised floats out.

For an image x in [0, 1] (channels r, g, b) with gray(x) = 0.2989 r + 0.587 g + 0.114 b (torchvision's weights):

    colour jitter, its four ops in the image's own order:
      brightness b   x <- clamp(b x)
      contrast c     x <- clamp(c x + (1 - c) mean(gray(x)))        (the mean over the image)
      saturation s   x <- clamp(s x + (1 - s) gray(x))              (per pixel)
      hue h          x <- hsv_to_rgb(hue + h mod 1, sat, val of rgb_to_hsv(x))
    grayscale        x <- gray(x) in all three channels
    Gaussian blur    x <- x * k_sigma along rows, then columns; k_sigma(t) ~ exp(-t^2 / 2 sigma^2) over an odd
                     width, reflect padding
    normalise        (x - mean) / std  (ImageNet's)

These are torchvision's definitions (tested against its per-image functional ops). An op that the image did not
draw has its identity parameter (b = c = s = 1, h = 0, no grayscale, sigma = 0). The batch runs brightness, contrast
and saturation at each of the four jitter positions with a per-image factor, and the hue on the views whose hue op
is at that position (index lists made with the parameters, so their sizes are known on the host): no size depends
on the data's values, and the same code runs on CPU ranks and GPUs without host syncs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xclr_train.augment import BRIGHTNESS, CONTRAST, MEAN, SATURATION, STD, Photometric, Recipe

GRAY = (0.2989, 0.587, 0.114)
# (r, g, b) of each sixth of the hue circle, as indices into (v, p, q, t) of the HSV -> RGB conversion
SECTORS = ((0, 3, 1), (2, 0, 1), (1, 0, 3), (1, 2, 0), (3, 1, 0), (0, 1, 2))


def gray(x: Tensor) -> Tensor:
    """(N, 1, H, W) luma of (N, 3, H, W)."""
    return (x * x.new_tensor(GRAY)[:, None, None]).sum(1, keepdim=True)


def shift_hue(x: Tensor, h: Tensor) -> Tensor:
    """Rotate the HSV hue of each image by h (N,) turns (torchvision's adjust_hue on [0, 1] RGB)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    chroma = maxc - minc
    sat = chroma / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    safe = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    is_r, is_g = maxc == r, (maxc == g) & (maxc != r)
    hue = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.remainder(hue / 6.0 + h[:, None, None], 1.0)
    sector = torch.floor(hue * 6.0)
    f = hue * 6.0 - sector
    sector = sector.long() % 6
    p, q, t = maxc * (1 - sat), maxc * (1 - sat * f), maxc * (1 - sat * (1 - f))
    channels = x.new_tensor(SECTORS, dtype=torch.long)[sector].permute(0, 3, 1, 2)  # (N, 3, H, W): 0 v, 1 p, 2 q, 3 t
    return torch.stack([maxc, p, q, t], 1).gather(1, channels)


def jitter(x: Tensor, p: Photometric) -> Tensor:
    """The four colour ops, at each position k the op p.order[:, k] of every image (identity factors elsewhere);
    the hue, the costly one, only on the views listed for k (`Photometric.hue_at`)."""
    ones = torch.ones_like(p.brightness)
    for k in range(4):
        op = p.order[:, k]
        b = torch.where(op == BRIGHTNESS, p.brightness, ones)[:, None, None, None]
        c = torch.where(op == CONTRAST, p.contrast, ones)[:, None, None, None]
        s = torch.where(op == SATURATION, p.saturation, ones)[:, None, None, None]
        y = gray(x)
        x = (b * c * s * x + (1 - c) * y.mean((2, 3), keepdim=True) + (1 - s) * y).clamp_(0, 1)
        views = p.hue_at[k]
        if len(views):
            x = x.index_copy(0, views, shift_hue(x.index_select(0, views), p.hue.index_select(0, views)))
    return x


def blur(x: Tensor, sigma: Tensor, width: int) -> Tensor:
    """Separable Gaussian blur of each image with its own sigma (N,); sigma 0 leaves the image as it is."""
    n, ch, h, w = x.shape
    t = torch.arange(width, device=x.device, dtype=x.dtype) - (width - 1) / 2
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    kernel = torch.exp(-(t[None] ** 2) / (2 * safe[:, None] ** 2))
    kernel = torch.where((sigma > 0)[:, None], kernel / kernel.sum(1, keepdim=True), (t == 0).to(x.dtype)[None])
    kernel = kernel.repeat_interleave(ch, 0)  # (N * 3, width)
    y = F.pad(x.reshape(1, n * ch, h, w), (width // 2,) * 4, mode="reflect")
    y = F.conv2d(y, kernel[:, None, :, None], groups=n * ch)
    y = F.conv2d(y, kernel[:, None, None, :], groups=n * ch)
    return y.reshape(n, ch, h, w)


def blur_width(image_size: int) -> int:
    """SimCLR's kernel: about a tenth of the image size, odd, at least 3."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def photometric(images: Tensor, p: Photometric, recipe: Recipe) -> Tensor:
    """uint8 crops (N, 3, S, S) and their parameters -> normalised float32 views (module docstring); the ops that
    `recipe` never draws are left out."""
    x = images.float().div_(255)
    if recipe.jitter_p:
        x = jitter(x, p)
    if recipe.gray_p:
        x = torch.where(p.gray[:, None, None, None], gray(x).expand_as(x), x)
    if recipe.blur_p:
        x = blur(x, p.sigma, blur_width(x.shape[-1]))
    return (x - x.new_tensor(MEAN)[:, None, None]) / x.new_tensor(STD)[:, None, None]
