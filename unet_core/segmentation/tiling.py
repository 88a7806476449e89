"""Tiled inference with overlap and blending, in row strips so memory stays bounded.

A large image is cut into tiles of ``tile`` px (the last tile of a row or column is aligned to
the image edge, so every tile has the same size and no tile needs padding beyond what the
model does itself). Tiles step by ``tile * (1 - overlap)``. Each tile's class probabilities are
multiplied by a blending window and added into an accumulator together with the window; the
result is the weighted mean. The gaussian window is the one nnU-Net and MONAI use:
``w(y, x) = exp(-((y - cy)^2 + (x - cx)^2) / (2 sigma^2))`` with the centre
``c = (size - 1) / 2`` and ``sigma = size * 0.125`` per axis, scaled to a maximum of 1 and with
zeros replaced by the smallest positive value, so every pixel gets a defined weight.

Accumulation runs one row of tiles at a time: the accumulator only spans the rows the current
tile row touches (``tile`` rows x image width x (classes + 1) floats); rows that no later tile
reaches are finished, handed to a sink and dropped. Tiles are read through a callback, so the
input itself may be produced lazily (a huge image never needs to exist as one float tensor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..progress import ProgressCallback, no_progress

GAUSSIAN_SIGMA_SCALE = 0.125
BLENDS = ("gaussian", "constant")

# read(y0, y1, x0, x1) -> [C, y1-y0, x1-x0] float tensor (already normalised)
TileReader = Callable[[int, int, int, int], torch.Tensor]
# predict([N, C, h, w]) -> probabilities [N, K, h, w]
Predictor = Callable[[torch.Tensor], torch.Tensor]
# sink(y0, probabilities [K, rows, W]) receives finished rows in order
RowSink = Callable[[int, torch.Tensor], None]


def gaussian_window(height: int, width: int, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> torch.Tensor:
    """The blending window [height, width] float32, max 1, strictly positive."""
    def axis(n: int) -> torch.Tensor:
        sigma = max(n * sigma_scale, 1e-6)
        pos = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-pos ** 2 / (2 * sigma ** 2))

    window = axis(height)[:, None] * axis(width)[None, :]
    window = window / window.max()
    positive = window[window > 0]
    floor = positive.min() if positive.numel() else torch.tensor(1.0, dtype=torch.float64)
    return torch.where(window > 0, window, floor).to(torch.float32)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of ``tile`` px every ``stride`` px, last one flush."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, max(1, stride)))
    starts.append(length - tile)
    return sorted(set(starts))


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def plan_tiles(height: int, width: int, tile: int, overlap: float, divisor: int = 1) -> TilePlan:
    """Tile positions for an image; ``tile`` is rounded down to a multiple of ``divisor`` (at least one)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    divisor = max(1, int(divisor))
    tile = max(divisor, (int(tile) // divisor) * divisor)
    tile_h, tile_w = min(tile, height), min(tile, width)
    stride_h = max(1, int(round(tile_h * (1 - overlap))))
    stride_w = max(1, int(round(tile_w * (1 - overlap))))
    return TilePlan(height, width, tile_h, tile_w, tuple(tile_starts(height, tile_h, stride_h)),
                    tuple(tile_starts(width, tile_w, stride_w)))


def working_bytes(plan: TilePlan, channels: int, classes: int, tile_batch: int = 1) -> int:
    """Host bytes the strip accumulator and a batch of tiles need (model activations not included)."""
    accumulator = (classes + 1) * plan.tile_h * plan.width * 4
    tiles = tile_batch * (channels + 2 * classes) * plan.tile_h * plan.tile_w * 4
    return accumulator + tiles


def run_tiled(predict: Predictor, read: TileReader, plan: TilePlan, classes: int, sink: RowSink,
              blend: str = "gaussian", tile_batch: int = 1, progress: ProgressCallback | None = None,
              done: int = 0, total: int | None = None) -> int:
    """Blend tiles row by row into ``sink``; returns the number of tiles done (``done`` + this image's)."""
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    progress = progress or no_progress
    total = total if total is not None else plan.count
    if blend == "gaussian" and plan.count > 1:
        window = gaussian_window(plan.tile_h, plan.tile_w)
    else:
        window = torch.ones(plan.tile_h, plan.tile_w)
    width, tile_h = plan.width, plan.tile_h
    # the accumulator always spans the rows of the current tile row: [y, y + tile_h)
    acc = torch.zeros(classes, tile_h, width)
    weight = torch.zeros(tile_h, width)
    ys = list(plan.ys)
    for row, y in enumerate(ys):
        for first in range(0, len(plan.xs), tile_batch):
            xs = plan.xs[first:first + tile_batch]
            tiles = [read(y, y + tile_h, x, x + plan.tile_w) for x in xs]
            batch = tiles[0][None] if len(tiles) == 1 else torch.stack(tiles)
            del tiles
            probs = predict(batch).float().cpu()
            del batch
            for i, x in enumerate(xs):
                acc[:, :, x:x + plan.tile_w].addcmul_(probs[i], window)
                weight[:, x:x + plan.tile_w].add_(window)
            del probs
            done += len(xs)
            progress(done, total, f"tile {done}/{total}")
        finished = ys[row + 1] if row + 1 < len(ys) else plan.height
        rows = finished - y  # rows no later tile reaches
        sink(y, acc[:, :rows].div_(weight[:rows]))  # every pixel is covered by a positive window
        if row + 1 < len(ys):
            keep = tile_h - rows
            acc[:, :keep] = acc[:, rows:].clone()
            weight[:keep] = weight[rows:].clone()
            acc[:, keep:] = 0
            weight[keep:] = 0
    return done
