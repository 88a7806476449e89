"""Segment a volume given as a ComfyUI IMAGE batch of z-slices ([D, H, W, C]) with a 3D model.

The slices are checked and mapped to the model's channels as 2D segmentation does
(:func:`~.images.inspect_images`: RGB -> luminance for a one-channel model, values out of
0..1 rescaled or refused), normalised with the checkpoint's mean/std, and read one z-slab at a
time by the 3D sliding window (:mod:`.sliding_window3d`), so only the slab being segmented is
ever converted to float model input. ``D = 1`` (a 2D image) works: the window is one slice deep
and the model pads z itself.

Outputs, all on the CPU: ``probabilities`` [D, H, W] (the sigmoid for one logit channel; else
1 - P(class 0), "any foreground"), ``masks`` [D, H, W] (probability >= threshold) and
``overlay`` [D, H, W, 3] (the slices tinted where the mask is set).

Memory: see :mod:`.sliding_window3d` (windows in z-slabs; a volume larger than the device's
memory streams through). Out of memory at one window per call: the in-plane patch is halved
and the volume redone, down to :data:`MIN_PATCH`.

A 2D model is refused with a message naming both (its architecture and "volume"): running it
slice by slice is what Segment U-Net does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...compiling import is_out_of_memory
from ...errors import InputError, SegmentationError
from ...progress import ProgressCallback
from ..model import model_channels
from .images import inspect_images, to_model_input
from .outputs import overlay
from .predictor import make_predictor
from .sliding_window3d import plan_windows, run_sliding_window

log = logging.getLogger(__name__)

MIN_PATCH = 16  # in-plane window size below which an out-of-memory error is passed on


@dataclass
class VolumeResult:
    """Per-slice results [D, H, W] (``overlay`` [D, H, W, 3]), the window plan used and warnings."""

    probabilities: torch.Tensor
    masks: torch.Tensor
    overlay: torch.Tensor
    patch: tuple[int, int, int]
    windows: int
    window_batch: int
    warnings: list[str] = field(default_factory=list)


def is_volume_model(model: nn.Module) -> bool:
    """True for the 3D models (``spatial_dims == 3``)."""
    return int(getattr(model, "spatial_dims", 2)) == 3


def _norm_vectors(meta: Any, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    norm = getattr(meta, "normalization", None) or {}
    mean = torch.as_tensor(norm.get("mean", [0.0] * channels), dtype=torch.float32).reshape(-1)
    std = torch.as_tensor(norm.get("std", [1.0] * channels), dtype=torch.float32).reshape(-1)
    return mean.expand(channels).clone(), std.expand(channels).clone()


def segment_volume(model: nn.Module, meta: Any, images: torch.Tensor, patch: tuple[int, int, int] = (32, 128, 128),
                   overlap: float = 0.25, threshold: float | None = None, device: torch.device | str | None = None,
                   progress: ProgressCallback | None = None, window_batch: int = 1, tta_flips: bool = False,
                   speed: str = "exact", input_name: str = "volume") -> VolumeResult:
    """Segment the IMAGE batch ``images`` [D, H, W, C] as one volume (see the module notes)."""
    if not is_volume_model(model):
        arch = (getattr(model, "config", None) or {}).get("architecture", type(model).__name__)
        raise SegmentationError(f"Segment Volume: the model is a 2D {arch} but the input is a volume; load a 3D "
                                "model (unet3d, pytorch-3dunet, MONAI 3D) or use Segment U-Net slice by slice")
    if any(int(p) < 1 for p in patch):
        raise InputError(f"Segment Volume: patch {tuple(patch)} must be at least 1 voxel on each axis")
    in_channels, classes = model_channels(model)
    plan_in = inspect_images(images, in_channels, input_name)
    warnings = list(plan_in.warnings)
    depth, height, width = (int(s) for s in images.shape[:3])
    mean, std = _norm_vectors(meta, in_channels)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).eval()
    predict_2d = make_predictor(model, device, classes, tta_flips, speed)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        probs = predict_2d(batch)
        if classes == 1:
            return probs
        return 1.0 - probs[:, :1]  # any foreground

    def read(z0: int, z1: int) -> torch.Tensor:
        slices = [to_model_input(images[z], plan_in, mean, std) for z in range(z0, z1)]
        return torch.stack(slices, 1).to(device)

    probabilities = torch.empty(depth, height, width, dtype=torch.float32)

    def sink(z0: int, probs: torch.Tensor) -> None:
        probabilities[z0:z0 + probs.shape[1]] = probs[0].to("cpu", torch.float32)

    size = (depth, height, width)
    patch = tuple(int(p) for p in patch)  # type: ignore[assignment]
    while True:
        plan = plan_windows(size, patch, overlap)  # type: ignore[arg-type]
        try:
            used = run_sliding_window(predict, read, plan, 1, sink, window_batch, "gaussian", progress)
            break
        except Exception as error:  # noqa: BLE001 - only out-of-memory at one window per call is retried
            smaller = (patch[0], patch[1] // 2, patch[2] // 2)
            if not is_out_of_memory(error) or min(smaller[1:]) < MIN_PATCH:
                raise
            warnings.append(f"out of memory at patch {plan.patch}: retried with {smaller}")
            log.warning("Segment Volume: %s", warnings[-1])
            patch = smaller
    cut = float(threshold if threshold is not None else getattr(meta, "threshold", 0.5))
    masks = (probabilities >= cut).float()
    tinted = overlay(images, masks, ["foreground"] * depth)
    return VolumeResult(probabilities, masks, tinted, plan.patch, plan.count, used, warnings)
