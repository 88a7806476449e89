"""Train a 3D segmentation model on volumes with random 3D patches and 3D augmentation.

Volumes are (IMAGE [D, H, W, C], MASK [D, H, W]) pairs. Each volume is mapped to the model's
channels and normalised once (as inference does), then every step draws ``batch_size`` patches
of ``patch`` voxels (clipped to the volume): a share ``foreground_fraction`` of them centred on
a random foreground voxel (so thin structures are seen often), the rest anywhere. Patches are
augmented by :func:`.augment3d.augment_volume` and fed to the model; the loss is the 2D trainer's
:func:`~.losses.segmentation_loss` (the volume's depth is folded into the height axis, which
leaves per-voxel cross-entropy and the pooled soft Dice unchanged). AdamW with the 2D trainer's
cosine schedule and warm-up; held-out volumes (``split_indices``) are scored by Dice of a full
sliding-window pass (:func:`..inference.volume.segment_volume`). Deterministic for ``seed`` on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import InputError, SegmentationError
from ...progress import ProgressCallback, no_progress
from ..inference.images import inspect_images, to_model_input
from ..inference.volume import segment_volume
from ..metrics import dice_score
from ..model import model_channels
from .augment import AugmentConfig
from .augment3d import augment_volume
from .loop import TrainResult, ordinary_tensors, split_indices
from .losses import segmentation_loss

log = logging.getLogger(__name__)

Volume = tuple[torch.Tensor, torch.Tensor]


@dataclass
class VolumeTrainConfig:
    """Training settings for volumes (defaults: a minute or two on a laptop CPU for the synthetic demo)."""

    steps: int = 300
    batch_size: int = 2
    patch: tuple[int, int, int] = (16, 64, 64)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    loss: str = "ce+dice"
    foreground_fraction: float = 0.5
    augment: AugmentConfig | None = field(default_factory=lambda: AugmentConfig(elastic=False))
    elastic_per_slice: bool = False
    val_fraction: float = 0.25
    seed: int = 0
    threshold: float = 0.5
    normalization: dict[str, Any] | None = None


def _prepare(volume: Volume, in_channels: int, mean: torch.Tensor, std: torch.Tensor,
             index: int) -> tuple[torch.Tensor, torch.Tensor]:
    image, mask = volume
    if image.ndim != 4 or mask.ndim != 3 or tuple(image.shape[:3]) != tuple(mask.shape):
        raise InputError(f"training: volume {index} is {tuple(image.shape)} but its mask is {tuple(mask.shape)}; "
                         "expected IMAGE [D, H, W, C] and MASK [D, H, W]")
    plan = inspect_images(image, in_channels, f"volume {index}")
    x = torch.stack([to_model_input(image[z], plan, mean, std) for z in range(image.shape[0])], 1)
    return x, (mask > 0.5).float()


def _sample(x: torch.Tensor, mask: torch.Tensor, patch: tuple[int, int, int], fg: bool,
            g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    size = tuple(mask.shape)
    p = tuple(min(a, b) for a, b in zip(patch, size, strict=True))
    if fg and bool(mask.any()):
        coords = mask.nonzero()
        centre = coords[int(torch.randint(0, coords.shape[0], (1,), generator=g))].tolist()
        start = [min(max(0, c - q // 2), s - q) for c, q, s in zip(centre, p, size, strict=True)]
    else:
        start = [int(torch.randint(0, s - q + 1, (1,), generator=g)) for q, s in zip(p, size, strict=True)]
    z, y, w = start
    return x[:, z:z + p[0], y:y + p[1], w:w + p[2]], mask[z:z + p[0], y:y + p[1], w:w + p[2]]


def split_volumes(images: torch.Tensor, masks: torch.Tensor, depth: int, name: str = "images") -> list[Volume]:
    """Cut an IMAGE batch [N, H, W, C] and its MASK batch [N, H, W] into volumes of ``depth`` slices (0: one)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not isinstance(masks, torch.Tensor) \
            or masks.ndim != 3 or images.shape[:3] != masks.shape:
        raise InputError(f"training: '{name}' must be IMAGE [N, H, W, C] with a MASK [N, H, W] of the same size; got "
                         f"{tuple(getattr(images, 'shape', ()))} and {tuple(getattr(masks, 'shape', ()))}")
    count = images.shape[0]
    depth = depth or count
    if count % depth:
        raise InputError(f"training: '{name}' has {count} slices, not a multiple of volume_depth {depth}")
    return [(images[i:i + depth], masks[i:i + depth]) for i in range(0, count, depth)]


def volume_dice(model: nn.Module, volumes: list[Volume], config: VolumeTrainConfig,
                device: torch.device | str | None = None) -> float:
    """Dice of thresholded sliding-window predictions against the masks, all voxels pooled."""
    meta = type("Meta", (), {"normalization": config.normalization or {}, "threshold": config.threshold})()
    preds, truths = [], []
    for image, mask in volumes:
        result = segment_volume(model, meta, image, patch=config.patch, overlap=0.25, device=device)
        preds.append(result.masks.flatten())
        truths.append((mask > 0.5).float().flatten())
    return float(dice_score(torch.cat(preds), torch.cat(truths)))


def train_volumes(model: nn.Module, volumes: list[Volume], config: VolumeTrainConfig,
                  progress: ProgressCallback | None = None, device: torch.device | str | None = None) -> TrainResult:
    """Train ``model`` (a 3D model, e.g. ``UNet3D``) in place; returns the 2D trainer's result record.

    Works under ``torch.inference_mode()`` (as ComfyUI calls nodes), as the 2D trainer does.
    """
    with torch.inference_mode(False), torch.enable_grad():
        ordinary_tensors(model)
        return _train_volumes(model, volumes, config, progress, device)


def _train_volumes(model: nn.Module, volumes: list[Volume], config: VolumeTrainConfig,
                   progress: ProgressCallback | None, device: torch.device | str | None) -> TrainResult:
    progress = progress or no_progress
    if not volumes:
        raise InputError("training: no volumes given")
    if int(getattr(model, "spatial_dims", 2)) != 3:
        raise SegmentationError("training on volumes needs a 3D model (e.g. unet3d); got a 2D "
                                f"{(getattr(model, 'config', None) or {}).get('architecture', type(model).__name__)}")
    in_channels, classes = model_channels(model)
    if classes != 1:
        raise SegmentationError(f"training on volumes: binary models only (1 output channel), got {classes}")
    norm = config.normalization or {}
    mean = torch.as_tensor(norm.get("mean", [0.0] * in_channels), dtype=torch.float32).reshape(-1).expand(in_channels)
    std = torch.as_tensor(norm.get("std", [1.0] * in_channels), dtype=torch.float32).reshape(-1).expand(in_channels)
    prepared = [_prepare(v, in_channels, mean, std, i) for i, v in enumerate(volumes)]
    train_idx, val_idx = split_indices(len(volumes), config.val_fraction, config.seed)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    g = torch.Generator().manual_seed(int(config.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, int(config.steps))
    warmup = int(round(steps * config.warmup_fraction))

    def lr_at(step: int) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    model.to(device).train()
    start, loss_value, history = time.monotonic(), float("nan"), []
    for step in range(steps):
        xs, ms = [], []
        for _ in range(config.batch_size):
            x, m = prepared[train_idx[int(torch.randint(0, len(train_idx), (1,), generator=g))]]
            fg = bool(torch.rand(1, generator=g) < config.foreground_fraction)
            px, pm = _sample(x, m, config.patch, fg, g)
            if config.augment is not None:
                px, pm = augment_volume(px, pm, config.augment, g, config.elastic_per_slice)
            xs.append(px)
            ms.append(pm)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        logits = model(torch.stack(xs).to(device))
        target = torch.stack(ms).to(device)
        loss = segmentation_loss(logits.flatten(2, 3), target.flatten(1, 2), config.loss)
        if not torch.isfinite(loss):
            raise SegmentationError(f"training diverged at step {step + 1} (loss {float(loss)}); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        progress(step + 1, steps, f"loss {loss_value:.4f}")
    model.eval()
    history.append({"step": steps, "epoch": steps / max(1, len(train_idx)), "loss": loss_value, "lr": lr_at(steps - 1)})
    val_dice = None
    if val_idx:
        val_dice = volume_dice(model, [volumes[i] for i in val_idx], config, device)
        history[-1]["val_dice"] = val_dice
    return TrainResult(model, history, val_dice, len(train_idx), len(val_idx), steps, time.monotonic() - start,
                       loss_value)
