"""Seeded synthetic volumes: textured 3D blobs and tubes on a textured, noisy background.

Each volume [D, H, W] holds ``blobs`` blobs (ellipsoids whose radius is modulated by low
harmonics of the direction) and ``tubes`` tubes (a smooth random 3D curve through the volume,
thickened to a radius), so both compact and thin, branching-looking structures occur, as in
microscopy stacks. Foreground is filled with a 3D stripe texture (random direction, period
``stripe_period`` voxels) over a slowly varying mean; the background is a slowly varying
mottled field. Their intensity spans overlap (foreground mean 0.5..0.8, background 0.1..0.6),
so a threshold alone does not separate them; texture and neighbourhood do. Gaussian noise
is added last. Everything comes from one ``torch.Generator`` seeded with ``seed``.

Returned as ComfyUI types: IMAGE [D, H, W, 3] (gray replicated) and MASK [D, H, W] in {0, 1};
``make_synthetic_volumes`` stacks several such volumes as a list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import InputError


@dataclass(frozen=True)
class VolumeSpec:
    """What the generator draws (defaults: a small 3D U-Net learns it in about a minute on CPU)."""

    depth: int = 32
    size: int = 64
    blobs: tuple[int, int] = (1, 3)
    tubes: tuple[int, int] = (1, 2)
    blob_radius: tuple[float, float] = (0.25, 0.4)  # fraction of the smallest side
    tube_radius: tuple[float, float] = (2.0, 3.5)    # voxels
    stripe_period: tuple[float, float] = (3.0, 4.5)
    stripe_amplitude: tuple[float, float] = (0.18, 0.28)
    noise: float = 0.04


def _uniform(g: torch.Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


def _smooth_field(g: torch.Generator, shape: tuple[int, int, int], cells: int, low: float, high: float) -> torch.Tensor:
    grid = torch.rand(1, 1, cells + 1, cells + 1, cells + 1, generator=g, dtype=torch.float64)
    field = F.interpolate(grid, size=shape, mode="trilinear", align_corners=True)[0, 0]
    field = (field - field.min()) / (field.max() - field.min()).clamp_min(1e-6)
    return low + (high - low) * field


def _grid(shape: tuple[int, int, int]) -> torch.Tensor:
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij")
    return torch.stack([zz, yy, xx], -1)  # [D, H, W, 3]


def _blob(g: torch.Generator, pos: torch.Tensor, shape: tuple[int, int, int], spec: VolumeSpec) -> torch.Tensor:
    radius = float(_uniform(g, *spec.blob_radius)) * min(shape)
    centre = torch.stack([_uniform(g, min(radius * 0.7, n / 2), max(n - radius * 0.7, n / 2))[0] for n in shape])
    axes = radius * _uniform(g, 0.7, 1.0, 3)
    d = (pos - centre) / axes
    r = d.norm(dim=-1).clamp_min(1e-9)
    boundary = torch.ones_like(r)
    for k in (2, 3):  # bumps along the direction cosines
        u = _uniform(g, -1, 1, 3)
        boundary += float(_uniform(g, 0.0, 0.15)) * torch.cos(k * (d @ (u / u.norm())) / r * math.pi / 2
                                                              + float(_uniform(g, 0, 2 * math.pi)))
    return r <= boundary


def _tube(g: torch.Generator, pos: torch.Tensor, shape: tuple[int, int, int], spec: VolumeSpec) -> torch.Tensor:
    size = torch.tensor(shape, dtype=torch.float64)
    control = torch.rand(4, 3, generator=g, dtype=torch.float64) * size
    t = torch.linspace(0, 1, 48, dtype=torch.float64)[:, None]
    b = [(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3]  # cubic Bezier
    curve = sum(bi * control[i] for i, bi in enumerate(b))  # [48, 3]
    radius = float(_uniform(g, *spec.tube_radius))
    best = torch.full(shape, float("inf"), dtype=torch.float64)
    for a, c in zip(curve[:-1], curve[1:], strict=True):  # distance to each segment, inside its bounding box
        lo = [max(0, int(math.floor(min(a[i], c[i]) - radius - 1))) for i in range(3)]
        hi = [min(shape[i], int(math.ceil(max(a[i], c[i]) + radius + 2))) for i in range(3)]
        if any(h <= low for low, h in zip(lo, hi, strict=True)):
            continue
        box = pos[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        seg = c - a
        s = (((box - a) @ seg) / seg.dot(seg).clamp_min(1e-12)).clamp(0, 1)
        dist = (box - a - s[..., None] * seg).norm(dim=-1)
        view = best[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        torch.minimum(view, dist, out=view)
    return best <= radius


def make_volume(spec: VolumeSpec, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One volume [D, H, W] float32 0..1 and its mask [D, H, W] in {0, 1}."""
    shape = (spec.depth, spec.size, spec.size)
    pos = _grid(shape)
    mask = torch.zeros(shape, dtype=torch.bool)
    for _ in range(int(torch.randint(spec.blobs[0], spec.blobs[1] + 1, (1,), generator=g))):
        mask |= _blob(g, pos, shape, spec)
    for _ in range(int(torch.randint(spec.tubes[0], spec.tubes[1] + 1, (1,), generator=g))):
        mask |= _tube(g, pos, shape, spec)
    background = _smooth_field(g, shape, 3, 0.1, 0.6) + _smooth_field(g, shape, 10, -0.06, 0.06)
    direction = torch.randn(3, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    period = float(_uniform(g, *spec.stripe_period))
    stripes = torch.sin(2 * math.pi * (pos @ direction) / period + float(_uniform(g, 0, 2 * math.pi)))
    foreground = _smooth_field(g, shape, 2, 0.5, 0.8) + float(_uniform(g, *spec.stripe_amplitude)) * stripes
    gray = torch.where(mask, foreground, background)
    gray = gray + spec.noise * torch.randn(shape, generator=g, dtype=torch.float64)
    return gray.clamp(0, 1).float(), mask.float()


def make_synthetic_volumes(count: int, depth: int = 32, size: int = 64, seed: int = 0,
                           spec: VolumeSpec | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` (IMAGE [D, H, W, 3], MASK [D, H, W]) pairs, deterministic for ``seed``."""
    if count < 1:
        raise InputError(f"synthetic volumes: count must be >= 1, got {count}")
    if depth < 1 or size < 8:
        raise InputError(f"synthetic volumes: depth must be >= 1 and size >= 8 voxels, got {depth} x {size}")
    spec = VolumeSpec(**{**(spec.__dict__ if spec else {}), "depth": int(depth), "size": int(size)})
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(int(count)):
        gray, mask = make_volume(spec, g)
        out.append((gray[..., None].expand(*gray.shape, 3).contiguous(), mask))
    return out
