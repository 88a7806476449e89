"""Training augmentation for image/mask pairs, deterministic for a seed.

Geometric changes (flips, 90-degree rotations, elastic deformation) move image, mask and the
optional per-pixel weight map together (the weights warped bilinearly); photometric ones (brightness, contrast) touch the image only. Elastic deformation
follows Simard et al. (2003) as the U-Net paper used it: a random displacement field per
pixel, smoothed by a gaussian of ``elastic_sigma`` px, scaled so its largest displacement is
``elastic_alpha`` px, and applied with ``F.grid_sample`` (bilinear for the image, nearest for
the mask so labels stay labels). All randomness comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rotate90: bool = True
    brightness: float = 0.1   # additive shift drawn from [-b, b] (image in 0..1)
    contrast: float = 0.1     # gain drawn from [1 - c, 1 + c] around the image mean
    elastic: bool = False
    elastic_p: float = 0.5    # share of samples deformed
    elastic_alpha: float = 3.0  # largest displacement, px
    elastic_sigma: float = 6.0  # smoothness of the field, px


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D gaussian, radius 3 sigma."""
    radius = max(1, int(math.ceil(3 * sigma)))
    xs = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-xs ** 2 / (2 * sigma ** 2))
    return (k / k.sum()).to(dtype)


def smooth(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of [N, C, H, W] (replicate padding)."""
    k = gaussian_kernel1d(sigma, field.dtype)
    r = k.numel() // 2
    c = field.shape[1]
    out = F.pad(field, (r, r, 0, 0), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, r, r), mode="replicate")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def elastic_field(height: int, width: int, alpha: float, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """A smooth displacement field [2, H, W] in px (dy, dx), max |displacement| = alpha."""
    raw = torch.randn(1, 2, height, width, generator=generator)
    field = smooth(raw, sigma)[0]
    return field * (alpha / field.abs().amax().clamp_min(1e-12))


def apply_displacement(image: torch.Tensor, mask: torch.Tensor, field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp image [C, H, W] (bilinear) and mask [H, W] (nearest) by a px field [2, H, W]: out(p) = in(p + d(p))."""
    _, height, width = image.shape
    field = field.to(image.device)
    ys = torch.arange(height, dtype=image.dtype)[:, None] + field[0]
    xs = torch.arange(width, dtype=image.dtype)[None, :] + field[1]
    # align_corners=True: -1 and 1 are the centres of the first and last pixels
    gx = 2 * xs / max(width - 1, 1) - 1
    gy = 2 * ys / max(height - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1)[None]
    warped = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=True)[0]
    labels = F.grid_sample(mask[None, None].to(image.dtype), grid, mode="nearest", padding_mode="reflection",
                           align_corners=True)[0, 0]
    return warped, labels.to(mask.dtype)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64))


def augment_pair(image: torch.Tensor, mask: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                 weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One random augmentation of image [C, H, W] (0..1), mask [H, W] and the optional weight map [H, W]."""
    def move(fn):  # noqa: ANN001, ANN202 - one geometric change for all three
        nonlocal image, mask, weight
        image, mask = fn(image), fn(mask)
        weight = None if weight is None else fn(weight)

    if config.flips:
        if torch.rand((), generator=generator) < 0.5:
            move(lambda t: t.flip(-1))
        if torch.rand((), generator=generator) < 0.5:
            move(lambda t: t.flip(-2))
    if config.rotate90:
        square = image.shape[-1] == image.shape[-2]
        k = int(torch.randint(0, 4 if square else 1, (), generator=generator)) * (1 if square else 2)
        if k:
            move(lambda t: torch.rot90(t, k, (-2, -1)))
    if config.elastic and torch.rand((), generator=generator) < config.elastic_p:
        field = elastic_field(image.shape[-2], image.shape[-1], config.elastic_alpha, config.elastic_sigma, generator)
        if weight is not None:
            weight = apply_displacement(weight[None], mask, field)[0][0]
        image, mask = apply_displacement(image, mask, field)
    if config.contrast > 0 or config.brightness > 0:
        gain = _uniform(generator, 1 - config.contrast, 1 + config.contrast)
        shift = _uniform(generator, -config.brightness, config.brightness)
        mean = image.mean()
        image = ((image - mean) * gain + mean + shift).clamp(0.0, 1.0)
    return image.contiguous(), mask.contiguous(), None if weight is None else weight.contiguous()


def augment_batch(images: torch.Tensor, masks: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                  weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``augment_pair`` for each sample of images [B, C, H, W], masks [B, H, W] and optional weights [B, H, W]."""
    each = [None] * len(images) if weights is None else list(weights)
    out = [augment_pair(i, m, config, generator, w) for i, m, w in zip(images, masks, each, strict=True)]
    stacked = None if weights is None else torch.stack([o[2] for o in out])
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out]), stacked
