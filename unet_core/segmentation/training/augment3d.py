"""3D training augmentation for volume/mask patches, deterministic for a ``torch.Generator``.

Geometric changes move image and mask together: a flip along each of z, y, x (probability 1/2
each), an in-plane rotation by a multiple of 90 degrees (y, x only: z spacing often differs),
and an elastic deformation (a random displacement field per voxel, smoothed by a gaussian of
``elastic_sigma`` voxels, scaled to a largest displacement of ``elastic_alpha`` voxels; in 3D or,
with ``elastic_per_slice``, in-plane only with no z displacement, for anisotropic stacks),
applied with ``F.grid_sample`` (trilinear for the image, nearest for the mask). Intensity
changes touch the image only: brightness shift and contrast gain as in 2D
(:class:`~.augment.AugmentConfig` holds their sizes and the elastic settings).
In-plane rotations by 90 or 270 degrees need square patches; others keep the 0/180 choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .augment import AugmentConfig, gaussian_kernel1d


def smooth3d(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of [N, C, D, H, W] (replicate padding)."""
    k = gaussian_kernel1d(sigma, field.dtype)
    r = k.numel() // 2
    c = field.shape[1]
    out = field
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = -1
        pad = [0] * 6
        pad[(2 - axis) * 2], pad[(2 - axis) * 2 + 1] = r, r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.view(shape).expand(c, 1, *k.view(shape).shape[2:]),
                       groups=c)
    return out


def elastic_field_3d(size: tuple[int, int, int], alpha: float, sigma: float, generator: torch.Generator,
                     per_slice: bool = False) -> torch.Tensor:
    """A smooth displacement field [3, D, H, W] in voxels (dz, dy, dx), max |displacement| = alpha."""
    raw = torch.randn(1, 3, *size, generator=generator)
    field = smooth3d(raw, sigma)[0]
    if per_slice:
        field[0] = 0.0
    return field * (alpha / field.abs().amax().clamp_min(1e-12))


def warp(image: torch.Tensor, mask: torch.Tensor, field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp image [C, D, H, W] (trilinear) and mask [D, H, W] (nearest): out(p) = in(p + d(p))."""
    depth, height, width = mask.shape
    axes = [torch.arange(n, dtype=torch.float32) for n in (depth, height, width)]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    coords = []
    for base, d, n in ((xx, field[2], width), (yy, field[1], height), (zz, field[0], depth)):
        coords.append(2 * (base + d) / max(n - 1, 1) - 1)
    grid = torch.stack(coords, -1)[None]
    img = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=True)[0]
    msk = F.grid_sample(mask[None, None], grid, mode="nearest", padding_mode="reflection", align_corners=True)[0, 0]
    return img, msk


def augment_volume(image: torch.Tensor, mask: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                   elastic_per_slice: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented copy of image [C, D, H, W] (normalised) and mask [D, H, W]."""
    if config.flips:
        for axis in range(3):
            if bool(torch.rand(1, generator=generator) < 0.5):
                image, mask = image.flip(axis + 1), mask.flip(axis)
    if config.rotate90:
        square = mask.shape[1] == mask.shape[2]
        k = int(torch.randint(0, 4 if square else 2, (1,), generator=generator)) * (1 if square else 2)
        if k:
            image, mask = torch.rot90(image, k, (2, 3)), torch.rot90(mask, k, (1, 2))
    if config.elastic and bool(torch.rand(1, generator=generator) < config.elastic_p):
        field = elastic_field_3d(tuple(mask.shape), config.elastic_alpha, config.elastic_sigma, generator,
                                 elastic_per_slice)
        image, mask = warp(image.float(), mask.float(), field)
    if config.brightness > 0 or config.contrast > 0:
        shift = (torch.rand(1, generator=generator) * 2 - 1) * config.brightness
        gain = 1 + (torch.rand(1, generator=generator) * 2 - 1) * config.contrast
        mean = image.mean()
        image = (image - mean) * gain + mean + shift
    return image.contiguous(), mask.contiguous()

