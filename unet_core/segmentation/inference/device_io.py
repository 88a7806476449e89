"""Moving segmentation work to and from the compute device: the speed choice, how many tiles
go per model call, whether the IMAGE batch is copied to the device whole, and the staged
writer that brings finished rows back to the host outputs while the GPU works on the next."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...compiling import is_out_of_memory
from ...errors import InputError
from .tiling import TilePlan, choose_tile_batch

log = logging.getLogger(__name__)

SEGMENT_SPEEDS = ("auto", "exact", "fast", "compiled")
DEFAULT_TILE_BATCH = 4  # tiles per model call on the CPU
# Tiles per call on a GPU come from a memory estimate: the activations of a U-Net at full
# resolution peak at about ACTIVATION_FACTOR maps of its first width (skip, upsampled, the
# concatenation (2), two conv outputs, norm outputs and slack), per tile; the batch gets at most
# ACTIVATION_BUDGET bytes and half the free device memory.
ACTIVATION_FACTOR = 8
ACTIVATION_BUDGET = 4 << 30
# An IMAGE batch up to this size (and a quarter of the free device memory) is copied to the device
# once: its values are checked there and tile rows are sliced from it with no further host reads.
UPLOAD_LIMIT = 2 << 30


def resolve_speed(speed: str, device: torch.device) -> str:
    """'auto' -> 'fast' on CUDA, 'exact' elsewhere; InputError for an unknown name."""
    if speed not in SEGMENT_SPEEDS:
        raise InputError(f"speed {speed!r}: expected one of {list(SEGMENT_SPEEDS)}")
    if speed == "auto":
        return "fast" if device.type == "cuda" else "exact"
    return speed


def _first_width(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return int(conv.out_channels) if conv is not None else 64


def auto_tile_batch(model: nn.Module, plan: TilePlan, device: torch.device, speed: str, in_channels: int,
                    classes: int) -> int:
    """Tiles per model call: DEFAULT_TILE_BATCH off CUDA; on CUDA what the activation budget allows."""
    if device.type != "cuda":
        return DEFAULT_TILE_BATCH
    elem = 4 if speed == "exact" else 2  # fast / compiled run in bf16
    per_tile = plan.tile_h * plan.tile_w * (_first_width(model) * elem * ACTIVATION_FACTOR
                                            + (in_channels + 3 * classes) * 4)
    free, _total = torch.cuda.mem_get_info(device)
    return choose_tile_batch(len(plan.xs), per_tile, min(ACTIVATION_BUDGET, free // 2))


def device_copy(images: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The IMAGE batch on ``device`` when it is small enough to copy whole (the images themselves on CPU)."""
    if device.type == "cpu":
        return images if images.device.type == "cpu" else images.cpu()
    if device.type != "cuda":
        return None
    nbytes = images.numel() * images.element_size()
    free, _total = torch.cuda.mem_get_info(device)
    if nbytes > min(UPLOAD_LIMIT, free // 4):
        return None
    try:
        return images.to(device)
    except Exception as error:  # noqa: BLE001 - out of memory: stream rows instead
        if not is_out_of_memory(error):
            raise
        log.warning("the image batch does not fit on %s (%s); reading it one tile row at a time", device, error)
        return None


class RowWriter:
    """Writes finished rows (probabilities on the compute device) into the host outputs.

    Staged (the default on CUDA): a row's planes go through one pinned staging buffer with a
    non-blocking copy; the previous row is moved from staging into the outputs when the next one
    arrives (its copy was queued before the current row's model calls, so the wait is short and
    the host copy overlaps the GPU's work). ``flush`` finishes the last row. Unstaged: rows are
    copied directly (a synchronous copy off the CPU).
    """

    def __init__(self, probabilities: torch.Tensor, masks: torch.Tensor, planes: int,
                 to_planes: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                 tile_h: int, width: int, staged: bool | None = None) -> None:
        self.probabilities, self.masks, self.planes, self.to_planes = probabilities, masks, planes, to_planes
        self.device = device
        self.stage_p = self.stage_m = None
        self.pending: tuple[int, int, int, Any] | None = None
        if staged is None:
            staged = device.type == "cuda"
        if staged:
            pin = device.type == "cuda"
            try:
                self.stage_p = torch.empty(planes * tile_h * width, pin_memory=pin)
                self.stage_m = torch.empty(planes * tile_h * width, pin_memory=pin)
            except RuntimeError as error:  # pinning refused: plain copies still work
                log.warning("no pinned staging buffer (%s); copying rows synchronously", error)
                self.stage_p = self.stage_m = None

    @staticmethod
    def staging_bytes(device: torch.device, planes: int, tile_h: int, width: int) -> int:
        return 2 * planes * tile_h * width * 4 if device.type == "cuda" else 0

    def __call__(self, b: int, y0: int, probs: torch.Tensor) -> None:
        p, m = self.to_planes(probs)
        planes, rows, width = p.shape
        if self.stage_p is None or p.device.type != self.device.type:
            lo = b * self.planes
            self.probabilities[lo:lo + planes, y0:y0 + rows] = p
            self.masks[lo:lo + planes, y0:y0 + rows] = m
            return
        self.flush()  # the staging buffer is free again once the previous row has left it
        n = planes * rows * width
        self.stage_p[:n].view(planes, rows, width).copy_(p, non_blocking=True)
        self.stage_m[:n].view(planes, rows, width).copy_(m, non_blocking=True)
        event = None
        if p.is_cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(p.device))  # the stream the copies were queued on
        self.pending = (b, y0, rows, event)

    def flush(self) -> None:
        """Move the queued row (if any) from staging into the outputs."""
        if self.pending is None:
            return
        b, y0, rows, event = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        lo, width = b * self.planes, self.probabilities.shape[-1]
        n = self.planes * rows * width
        self.probabilities[lo:lo + self.planes, y0:y0 + rows] = self.stage_p[:n].view(self.planes, rows, width)
        self.masks[lo:lo + self.planes, y0:y0 + rows] = self.stage_m[:n].view(self.planes, rows, width)

    def discard(self) -> None:
        """Forget a queued row (the image is being redone); waits for its copy to land first."""
        if self.pending is not None and self.pending[3] is not None:
            self.pending[3].synchronize()
        self.pending = None
