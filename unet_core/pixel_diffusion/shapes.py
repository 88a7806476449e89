"""Seeded synthetic shapes: one flat-coloured disc, square or triangle per image on a plain background.

Made for training a tiny pixel diffusion model in minutes: few degrees of freedom (kind,
colour, centre, size), sharp edges a blurry model visibly misses, and the same images for
the same seed on every machine (one ``numpy.random.Generator``). Images are ``[N, S, S, 3]``
float32 in 0..1 (ComfyUI IMAGE layout); ``labels`` gives the shape kind (0 disc, 1 square,
2 triangle).
"""

from __future__ import annotations

import numpy as np
import torch

KINDS = ("disc", "square", "triangle")
COLOURS = np.array([[0.95, 0.25, 0.2], [0.2, 0.8, 0.3], [0.25, 0.45, 0.95], [0.95, 0.85, 0.2]], dtype=np.float32)
BACKGROUND = np.array([0.08, 0.08, 0.1], dtype=np.float32)


def make_shapes(count: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [count, size, size, 3] in 0..1, kinds [count] long) for ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((count, size, size, 3), dtype=np.float32)
    kinds = rng.integers(0, len(KINDS), count)
    for i in range(count):
        r = rng.uniform(0.18, 0.32) * size
        cx, cy = rng.uniform(r, size - r, 2)
        if kinds[i] == 0:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        elif kinds[i] == 1:
            half = r * 0.85
            mask = (abs(xx - cx) <= half) & (abs(yy - cy) <= half)
        else:  # upright triangle inside the circle of radius r
            top, base = cy - r, cy + 0.6 * r
            width = (yy - top) / (base - top) * r * 0.95
            mask = (yy >= top) & (yy <= base) & (abs(xx - cx) <= width)
        colour = COLOURS[rng.integers(0, len(COLOURS))]
        images[i] = np.where(mask[..., None], colour, BACKGROUND)
    return torch.from_numpy(images), torch.from_numpy(kinds).long()
