"""Seeded synthetic segmentation data: textured shapes on textured, noisy backgrounds.

Each image holds one to three foreground shapes (ellipses, star polygons, smooth blobs) filled
with a fine stripe texture (period ``stripe_period`` px, random orientation and phase) over a
slowly varying mean; the background is a slowly varying mottled field plus noise. Both spans of
intensity overlap on purpose: no global threshold on intensity separates them, only local
texture does, so a model has to look at a neighbourhood (what a U-Net is for).

Everything comes from one ``numpy.random.Generator`` seeded with ``seed``: the same seed gives
the same images and masks on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InputError

SHAPES = ("ellipse", "polygon", "blob")


@dataclass(frozen=True)
class SyntheticSpec:
    """What the generator draws (defaults tuned so a small U-Net learns it in seconds on CPU)."""

    size: int = 64
    min_shapes: int = 1
    max_shapes: int = 3
    radius: tuple[float, float] = (0.14, 0.30)  # shape radius as a fraction of the image size
    stripe_period: tuple[float, float] = (3.0, 4.5)
    stripe_amplitude: tuple[float, float] = (0.18, 0.28)
    noise: float = 0.04


def _smooth_field(rng: np.random.Generator, size: int, cells: int, low: float, high: float) -> np.ndarray:
    """A slowly varying field: a cells x cells random grid upsampled bilinearly, scaled to [low, high]."""
    grid = rng.random((cells + 1, cells + 1))
    pos = np.linspace(0.0, cells, size)
    i0 = np.clip(np.floor(pos).astype(int), 0, cells - 1)
    t = pos - i0
    rows = grid[i0] * (1 - t)[:, None] + grid[i0 + 1] * t[:, None]          # [size, cells+1]
    field = rows[:, i0] * (1 - t)[None, :] + rows[:, i0 + 1] * t[None, :]   # [size, size]
    lo, hi = field.min(), field.max()
    field = (field - lo) / max(hi - lo, 1e-6)
    return low + (high - low) * field


def _shape_mask(rng: np.random.Generator, kind: str, size: int, spec: SyntheticSpec) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    radius = rng.uniform(*spec.radius) * size
    cy, cx = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
    if kind == "ellipse":
        a = radius
        b = radius * rng.uniform(0.55, 1.0)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == "polygon":
        count = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        radii = radius * rng.uniform(0.65, 1.0, count)
        px, py = cx + radii * np.cos(angles), cy + radii * np.sin(angles)
        inside = np.zeros((size, size), dtype=bool)
        for i in range(count):  # even-odd rule, one edge at a time over all pixels
            x1, y1, x2, y2 = px[i], py[i], px[(i + 1) % count], py[(i + 1) % count]
            crosses = (y1 > yy) != (y2 > yy)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_at = x1 + (yy - y1) * (x2 - x1) / (y2 - y1)
            inside ^= crosses & (xx < x_at)
        return inside
    # blob: radius modulated by a few low harmonics of the angle
    dy, dx = yy - cy, xx - cx
    phi = np.arctan2(dy, dx)
    boundary = np.ones_like(phi)
    for k in (2, 3, 4):
        boundary += rng.uniform(0.0, 0.18) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return np.hypot(dy, dx) <= radius * boundary


def _one(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    size = spec.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(spec.min_shapes, spec.max_shapes + 1))):
        mask |= _shape_mask(rng, SHAPES[int(rng.integers(len(SHAPES)))], size, spec)
    background = _smooth_field(rng, size, int(rng.integers(2, 5)), 0.15, 0.85)
    background += _smooth_field(rng, size, 12, -0.06, 0.06)  # mottling
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(*spec.stripe_period)
    stripes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 2 * np.pi))
    foreground = _smooth_field(rng, size, 3, 0.3, 0.7) + rng.uniform(*spec.stripe_amplitude) * stripes
    gray = np.where(mask, foreground, background) + rng.normal(0.0, spec.noise, (size, size))
    tint = rng.uniform(0.9, 1.1, 3)  # one tint for the whole image: no channel separates the classes
    rgb = np.clip(gray[..., None] * tint[None, None, :], 0.0, 1.0)
    return rgb.astype(np.float32), mask.astype(np.float32)


def make_synthetic(count: int, size: int = 64, seed: int = 0,
                   spec: SyntheticSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images IMAGE [N, size, size, 3] float 0..1 and masks MASK [N, size, size] in {0, 1}."""
    if count < 1:
        raise InputError(f"synthetic data: count must be >= 1, got {count}")
    if size < 8:
        raise InputError(f"synthetic data: size must be >= 8 px, got {size}")
    spec = SyntheticSpec(**{**(spec.__dict__ if spec else {}), "size": int(size)})
    rng = np.random.default_rng(int(seed))
    pairs = [_one(rng, spec) for _ in range(int(count))]
    images = torch.from_numpy(np.stack([p[0] for p in pairs]))
    masks = torch.from_numpy(np.stack([p[1] for p in pairs]))
    return images, masks
