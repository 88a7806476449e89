"""3D sliding-window inference with gaussian blending over z, y, x, in z-slabs so memory stays bounded.

A volume [C, D, H, W] is cut into windows of ``patch = (pd, ph, pw)`` voxels (each clipped to
the volume; the last window of an axis is aligned to the volume's end, so all windows have one
size). Windows step by ``patch * (1 - overlap)`` per axis. Each window's class probabilities are
multiplied by the 3D gaussian window (``w(z, y, x)`` = the product of the per-axis gaussians
of :func:`~.tiling.gaussian_window`: centre ``(n - 1) / 2``, sigma ``n * 0.125``, max 1, no zero)
and added into an accumulator with the window itself; the result is the weighted mean.

Memory: windows run one z-row at a time (all windows sharing a z start, ``batch`` per model
call). The accumulator spans only the slices that the current z-row touches
(``(K + 1) x pd x H x W`` floats, on the device the predictor returns); slices that no later
window reaches are finished, divided and handed to ``sink(z0, probs [K, n, H, W])`` then
dropped. The input is read through ``read(z0, z1) -> [C, z1 - z0, H, W]`` (normalised, any
device), so neither the input nor the output has to exist as one tensor: a volume larger than
memory streams through in slabs of ``pd`` slices.

Out of memory on the device: the window batch is halved and the z-row redone; at one window
per call the error propagates (the caller may retry with a smaller patch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...compiling import is_out_of_memory
from ...progress import ProgressCallback, no_progress
from .tiling import GAUSSIAN_SIGMA_SCALE, tile_starts

log = logging.getLogger(__name__)

VolumeReader = Callable[[int, int], torch.Tensor]
VolumePredictor = Callable[[torch.Tensor], torch.Tensor]  # [N, C, d, h, w] -> probabilities [N, K, d, h, w]
SlabSink = Callable[[int, torch.Tensor], None]


def gaussian_window_3d(size: tuple[int, int, int], sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> torch.Tensor:
    """The blending window [d, h, w] float32: product of per-axis gaussians, max 1, strictly positive."""
    axes = []
    for n in size:
        sigma = max(n * sigma_scale, 1e-6)
        pos = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        axes.append(torch.exp(-pos ** 2 / (2 * sigma ** 2)))
    window = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    window = window / window.max()
    positive = window[window > 0]
    floor = positive.min() if positive.numel() else torch.tensor(1.0, dtype=torch.float64)
    return torch.where(window > 0, window, floor).to(torch.float32)


@dataclass
class WindowPlan:
    """Window size (clipped to the volume) and the start of every window along z, y, x."""

    size: tuple[int, int, int]
    patch: tuple[int, int, int]
    starts: tuple[list[int], list[int], list[int]]

    @property
    def count(self) -> int:
        return len(self.starts[0]) * len(self.starts[1]) * len(self.starts[2])


def plan_windows(size: tuple[int, int, int], patch: tuple[int, int, int], overlap: float) -> WindowPlan:
    """Windows of ``patch`` (clipped to ``size``) stepping by ``patch * (1 - overlap)`` on each axis."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap {overlap} must be in [0, 1)")
    clipped = tuple(min(p, s) for p, s in zip(patch, size, strict=True))
    starts = tuple(tile_starts(s, p, max(1, int(round(p * (1 - overlap))))) for s, p in zip(size, clipped, strict=True))
    return WindowPlan(tuple(size), clipped, starts)  # type: ignore[arg-type]


def _predict_batched(predict: VolumePredictor, windows: list[torch.Tensor], batch: int) -> tuple[list[torch.Tensor], int]:
    """Run ``windows`` through ``predict`` ``batch`` at a time, halving ``batch`` on out-of-memory."""
    while True:
        try:
            out: list[torch.Tensor] = []
            for i in range(0, len(windows), batch):
                out.extend(predict(torch.stack(windows[i:i + batch])).unbind(0))
            return out, batch
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not is_out_of_memory(error) or batch == 1:
                raise
            batch = max(1, batch // 2)
            log.warning("out of memory: retrying with %d window(s) per model call", batch)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def run_sliding_window(predict: VolumePredictor, read: VolumeReader, plan: WindowPlan, classes: int,
                       sink: SlabSink, batch: int = 1, blend: str = "gaussian",
                       progress: ProgressCallback | None = None) -> int:
    """Blend every window's probabilities into finished z-slabs handed to ``sink`` in order.

    Returns the window batch that was finally used (smaller than ``batch`` after out-of-memory).
    """
    progress = progress or no_progress
    depth, height, width = plan.size
    pd, ph, pw = plan.patch
    weight = gaussian_window_3d(plan.patch) if blend == "gaussian" else torch.ones(plan.patch)
    acc: torch.Tensor | None = None
    acc_z = 0
    done = 0
    z_starts = plan.starts[0]
    for zi, z0 in enumerate(z_starts):
        slab = read(z0, z0 + pd)
        windows, places = [], []
        for y0 in plan.starts[1]:
            for x0 in plan.starts[2]:
                windows.append(slab[:, :, y0:y0 + ph, x0:x0 + pw])
                places.append((y0, x0))
        probs, batch = _predict_batched(predict, windows, batch)
        device = probs[0].device
        w = weight.to(device)
        if acc is None:
            acc = torch.zeros(classes + 1, pd, height, width, device=device)
            acc_z = z0
        # extend the accumulator to cover [acc_z, z0 + pd)
        need = z0 + pd - acc_z
        if need > acc.shape[1]:
            acc = torch.cat([acc, acc.new_zeros(classes + 1, need - acc.shape[1], height, width)], 1)
        rel = z0 - acc_z
        for p, (y0, x0) in zip(probs, places, strict=True):
            acc[:classes, rel:rel + pd, y0:y0 + ph, x0:x0 + pw] += p.float() * w
            acc[classes, rel:rel + pd, y0:y0 + ph, x0:x0 + pw] += w
        done += len(windows)
        progress(done, plan.count, f"z {z0}..{z0 + pd} of {depth}")
        finished_to = z_starts[zi + 1] if zi + 1 < len(z_starts) else depth
        n = finished_to - acc_z
        if n > 0:
            sink(acc_z, acc[:classes, :n] / acc[classes, :n])
            acc = acc[:, n:].clone()
            acc_z = finished_to
    return batch
