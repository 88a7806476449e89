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

Where the model runs (a GPU), the accumulator, the window and the blending live there too: the
accumulator is allocated on the device of the predictor's output, finished rows go to the sink
as device tensors, and nothing waits for the device per tile. With a strip reader
(``read_strip(y0, y1) -> [C, y1 - y0, W]``) a whole tile row's input is read once and its tiles
are sliced and stacked on that tensor's device, instead of one host read per tile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...progress import ProgressCallback, no_progress

GAUSSIAN_SIGMA_SCALE = 0.125
BLENDS = ("gaussian", "constant")

# read(y0, y1, x0, x1) -> [C, y1-y0, x1-x0] float tensor (already normalised)
TileReader = Callable[[int, int, int, int], torch.Tensor]
# read_strip(y0, y1) -> [C, y1-y0, W] float tensor (already normalised), on the device tiles run on
StripReader = Callable[[int, int], torch.Tensor]
# predict([N, C, h, w]) -> probabilities [N, K, h, w]
Predictor = Callable[[torch.Tensor], torch.Tensor]
# sink(y0, probabilities [K, rows, W]) receives finished rows in order, on the accumulator's device;
# the tensor is a view of the accumulator: copy what you keep before returning (a stream-ordered copy,
# e.g. non_blocking into pinned memory, is fine: later accumulation is ordered after it)
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


def working_bytes(plan: TilePlan, channels: int, classes: int, tile_batch: int = 1, strip: bool = False) -> int:
    """Bytes the strip accumulator and a batch of tiles need (model activations not included).

    ``strip``: tiles are sliced from a whole tile row read at once (the row and up to two
    temporaries of its size while it is normalised: three rows of ``channels`` x tile x width floats).
    """
    accumulator = (classes + 1) * plan.tile_h * plan.width * 4
    tiles = tile_batch * (channels + 2 * classes) * plan.tile_h * plan.tile_w * 4
    rows = 3 * channels * plan.tile_h * plan.width * 4 if strip else 0
    return accumulator + tiles + rows


def choose_tile_batch(tiles_per_row: int, per_tile_bytes: int, budget_bytes: int) -> int:
    """Tiles per model call: as many as ``budget_bytes`` allows, preferring batches that split a row evenly.

    A divisor of the row's tile count is taken when it is at least a third of the affordable batch
    (all calls then have one shape, which compiled models and cuDNN's autotuner like, and a batch of
    a few large tiles already fills a GPU); otherwise the row is split into equal-as-possible
    batches. At least 1, at most the row.
    """
    row = max(1, int(tiles_per_row))
    afford = max(1, min(row, int(budget_bytes // max(1, int(per_tile_bytes)))))
    divisor = max(d for d in range(1, afford + 1) if row % d == 0)
    if 3 * divisor >= afford:
        return divisor
    calls = -(-row // afford)
    return -(-row // calls)


def _blend_window(plan: TilePlan, blend: str, device: torch.device) -> torch.Tensor:
    if blend == "gaussian" and plan.count > 1:
        window = gaussian_window(plan.tile_h, plan.tile_w)
    else:
        window = torch.ones(plan.tile_h, plan.tile_w)
    return window.to(device)


def run_tiled(predict: Predictor, read: TileReader | None, plan: TilePlan, classes: int, sink: RowSink,
              blend: str = "gaussian", tile_batch: int = 1, progress: ProgressCallback | None = None,
              done: int = 0, total: int | None = None, read_strip: StripReader | None = None) -> int:
    """Blend tiles row by row into ``sink``; returns the number of tiles done (``done`` + this image's).

    Tiles come from ``read_strip`` (one read per tile row, tiles sliced from it) when given, else
    from ``read`` (one read per tile). The accumulator lives on the device of ``predict``'s output.
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if read is None and read_strip is None:
        raise ValueError("run_tiled needs a tile reader or a strip reader")
    progress = progress or no_progress
    total = total if total is not None else plan.count
    tile_batch = max(1, int(tile_batch))
    width, tile_h, tile_w = plan.width, plan.tile_h, plan.tile_w
    # the accumulator always spans the rows of the current tile row: [y, y + tile_h); it is made on the
    # device of the first prediction (the model's), so blending never leaves that device
    acc: torch.Tensor | None = None
    weight = window = acc
    ys = list(plan.ys)
    for row, y in enumerate(ys):
        strip = read_strip(y, y + tile_h) if read_strip is not None else None
        for first in range(0, len(plan.xs), tile_batch):
            xs = plan.xs[first:first + tile_batch]
            if strip is not None:
                tiles = [strip[:, :, x:x + tile_w] for x in xs]
            else:
                tiles = [read(y, y + tile_h, x, x + tile_w) for x in xs]
            batch = tiles[0][None].contiguous() if len(tiles) == 1 else torch.stack(tiles)
            del tiles
            probs = predict(batch).float()
            del batch
            if acc is None:
                acc = torch.zeros(classes, tile_h, width, device=probs.device)
                weight = torch.zeros(tile_h, width, device=probs.device)
                window = _blend_window(plan, blend, probs.device)
            for i, x in enumerate(xs):
                acc[:, :, x:x + tile_w].addcmul_(probs[i], window)
                weight[:, x:x + tile_w].add_(window)
            del probs
            done += len(xs)
            progress(done, total, f"tile {done}/{total}")
        del strip
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
