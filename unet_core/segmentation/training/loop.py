"""Train a segmentation U-Net on a :class:`~.data.SegmentationDataset`, on the CPU or a GPU.

AdamW, a cosine (with a short linear warm-up) or constant learning rate, random batches of
training images (cropped to ``patch_size`` when sizes differ), optional augmentation (flips,
90-degree turns, brightness/contrast, elastic), a loss from :mod:`.losses` with the optional
border weight map, and a held-out validation split evaluated on whole images with the Dice
score. All randomness (split, batches, crops, augmentation) comes from one generator seeded
with ``seed``, so the same seed and the same starting weights give bitwise the same weights
on the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import InputError, SegmentationError
from ...progress import ProgressCallback, no_progress
from ..model import model_channels
from .augment import AugmentConfig, augment_batch
from .data import SegmentationDataset
from .losses import LOSSES, border_weights, segmentation_loss

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """Training settings; the defaults suit a small model on a CPU."""

    steps: int = 200              # optimiser steps; 0: use ``epochs`` instead
    epochs: int = 0               # passes over the training split (when steps == 0)
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_fraction: float = 0.05
    loss: str = "ce+dice"
    border_weights: bool = False
    border_w0: float = 10.0
    border_sigma: float = 5.0
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    val_fraction: float = 0.2
    seed: int = 0
    patch_size: int = 0           # 0: whole images (crops to the smallest size when sizes differ)
    threshold: float = 0.5
    normalization: dict[str, Any] | None = None  # {"mean": [...], "std": [...]}; None: 0 and 1
    threads: int = 0              # 0: leave torch's thread count alone
    evaluations: int = 10         # at most this many validation passes (at epoch ends)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]]
    val_dice: float | None
    train_count: int
    val_count: int
    steps: int
    seconds: float
    loss: float

    def report(self) -> str:
        """A short human-readable summary."""
        lines = [f"trained {self.steps} steps on {self.train_count} image(s) in {self.seconds:.1f} s; "
                 f"final loss {self.loss:.4f}"]
        if self.val_dice is not None:
            lines.append(f"held-out Dice {self.val_dice:.4f} on {self.val_count} validation image(s)")
        for h in self.history:
            if "val_dice" in h:
                lines.append(f"  epoch {h['epoch']:.0f} step {h['step']:.0f}: loss {h['loss']:.4f}, "
                             f"val Dice {h['val_dice']:.4f}")
        return "\n".join(lines)


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    if count <= 0:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices; at least one training image, validation rounded."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"validation fraction {val_fraction}: expected 0 <= fraction < 1")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    val = min(int(round(count * val_fraction)), count - 1)
    return sorted(order[val:]), sorted(order[:val])


def _normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _crop(image: torch.Tensor, mask: torch.Tensor, height: int, width: int,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = mask.shape
    y = int(torch.randint(0, h - height + 1, (), generator=generator))
    x = int(torch.randint(0, w - width + 1, (), generator=generator))
    return image[y:y + height, x:x + width], mask[y:y + height, x:x + width]


def _targets(masks: torch.Tensor, classes: int) -> torch.Tensor:
    if classes == 1:
        return (masks > 0.5).float()
    return masks.round().long().clamp(0, classes - 1)


@torch.no_grad()
def evaluate_dice(model: nn.Module, data: SegmentationDataset, mean: torch.Tensor, std: torch.Tensor,
                  threshold: float = 0.5, device: torch.device | None = None) -> float:
    """Dice over all pixels of ``data`` pooled (foreground classes pooled for multi-class models)."""
    _, classes = model_channels(model)
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    inter = total = 0.0
    try:
        for image, mask in zip(data.images, data.masks, strict=True):
            x = _normalise(image.permute(2, 0, 1)[None].to(device), mean.to(device), std.to(device))
            logits = model(x).float().cpu()[0]
            if classes == 1:
                pred = (torch.sigmoid(logits[0]) >= threshold).float()
                target = (mask > 0.5).float()
                inter += float((pred * target).sum())
                total += float(pred.sum() + target.sum())
            else:
                labels = logits.argmax(0)
                target = mask.round().long()
                for k in range(1, classes):
                    p, t = (labels == k).float(), (target == k).float()
                    inter += float((p * t).sum())
                    total += float(p.sum() + t.sum())
    finally:
        model.train(was)
    return 1.0 if total == 0 else 2 * inter / total


def ordinary_tensors(model: nn.Module) -> None:
    """Replace parameters and buffers made under ``torch.inference_mode`` by ordinary copies.

    ComfyUI runs every node inside ``torch.inference_mode()``, so a model built or loaded by an
    earlier node holds inference tensors, which autograd refuses to train. Call with inference
    mode off; tensors that are already ordinary are left as they are.
    """
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None and param.is_inference():
                module._parameters[name] = nn.Parameter(param.clone(), requires_grad=param.requires_grad)
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_inference():
                module._buffers[name] = buffer.clone()


def _ordinary_dataset(dataset: SegmentationDataset) -> SegmentationDataset:
    """The dataset with any inference-mode tensor copied (see ``ordinary_tensors``)."""
    def ordinary(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.clone() if t.is_inference() else t for t in tensors]

    return SegmentationDataset(ordinary(dataset.images), ordinary(dataset.masks), list(dataset.names))


def train_segmentation(model: nn.Module, dataset: SegmentationDataset, config: TrainConfig,
                       progress: ProgressCallback | None = None,
                       device: torch.device | str | None = None) -> TrainResult:
    """Train ``model`` in place on ``dataset``; returns it with the loss and validation history.

    Works when called under ``torch.inference_mode()`` (as ComfyUI calls nodes): autograd is
    switched back on for the training, and inference-mode tensors are replaced by copies first.
    """
    with torch.inference_mode(False), torch.enable_grad():
        ordinary_tensors(model)
        return _train(model, _ordinary_dataset(dataset), config, progress, device)


def _train(model: nn.Module, dataset: SegmentationDataset, config: TrainConfig,
           progress: ProgressCallback | None, device: torch.device | str | None) -> TrainResult:
    progress = progress or no_progress
    if len(dataset) == 0:
        raise InputError("training: the dataset is empty")
    if config.loss not in LOSSES:
        raise InputError(f"training: unknown loss {config.loss!r}; expected one of {list(LOSSES)}")
    if config.schedule not in SCHEDULES:
        raise InputError(f"training: unknown schedule {config.schedule!r}; expected one of {list(SCHEDULES)}")
    if config.batch_size < 1 or config.lr <= 0:
        raise InputError("training: batch size must be >= 1 and the learning rate > 0")
    for image, mask, name in zip(dataset.images, dataset.masks, dataset.names, strict=True):
        if tuple(image.shape[:2]) != tuple(mask.shape):
            raise InputError(f"training: {name} is {image.shape[1]} x {image.shape[0]} px but its mask is "
                             f"{mask.shape[1]} x {mask.shape[0]} px")
    in_channels, classes = model_channels(model)
    if in_channels != 3:
        raise SegmentationError(f"training: the model takes {in_channels} channels; training feeds RGB (3)")
    if classes > 1 and any(float(m.max()) >= classes for m in dataset.masks):
        raise InputError(f"training: mask labels reach {max(float(m.max()) for m in dataset.masks):g} but the model "
                         f"has {classes} classes")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    norm = config.normalization or {}
    mean = torch.tensor(norm.get("mean", [0.0] * 3), dtype=torch.float32)
    std = torch.tensor(norm.get("std", [1.0] * 3), dtype=torch.float32)

    train_idx, val_idx = split_indices(len(dataset), config.val_fraction, config.seed)
    train, val = dataset.subset(train_idx), dataset.subset(val_idx)
    heights = [m.shape[0] for m in train.masks]
    widths = [m.shape[1] for m in train.masks]
    if config.patch_size > 0:
        ph, pw = min(config.patch_size, min(heights)), min(config.patch_size, min(widths))
    else:
        ph, pw = min(heights), min(widths)
    crop = any(h != ph for h in heights) or any(w != pw for w in widths)
    epoch_steps = max(1, math.ceil(len(train) / config.batch_size))
    steps = config.steps if config.steps > 0 else max(1, config.epochs) * epoch_steps
    warmup = int(round(steps * config.warmup_fraction)) if config.schedule == "cosine" else 0

    def lr_at(step: int) -> float:
        if config.schedule == "constant":
            return config.lr
        if step < warmup:
            return config.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return config.lr * 0.5 * (1 + math.cos(math.pi * t))

    eval_every = max(epoch_steps, math.ceil(steps / max(1, config.evaluations)))
    generator = torch.Generator().manual_seed(int(config.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.to(device).train()
    history: list[dict[str, float]] = []
    start = time.monotonic()
    loss_value = float("nan")
    with _threads(config.threads):
        for step in range(steps):
            picks = torch.randint(0, len(train), (config.batch_size,), generator=generator).tolist()
            pairs = [(train.images[i], train.masks[i]) for i in picks]
            if crop:
                pairs = [_crop(img, msk, ph, pw, generator) for img, msk in pairs]
            images = torch.stack([p[0] for p in pairs]).permute(0, 3, 1, 2)
            masks = torch.stack([p[1] for p in pairs])
            if config.augment is not None:
                images, masks = augment_batch(images, masks, config.augment, generator)
            target = _targets(masks, classes)
            weights = None
            if config.border_weights:
                weights = border_weights(target if classes > 1 else target.long(), config.border_w0,
                                         config.border_sigma).to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            inputs, target = _normalise(images, mean, std).to(device), target.to(device)
            supervised = getattr(model, "supervised_loss", None)  # deep supervision (U-Net 3+): every head
            if supervised is not None:
                loss = supervised(inputs, target, functools.partial(segmentation_loss, kind=config.loss,
                                                                    pixel_weights=weights))
            else:
                loss = segmentation_loss(model(inputs), target, config.loss, weights)
            if not torch.isfinite(loss):
                raise SegmentationError(f"training diverged at step {step + 1} (loss {float(loss)}); "
                                        "lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
            done = step + 1
            entry: dict[str, float] = {"step": done, "epoch": done / epoch_steps, "loss": loss_value,
                                       "lr": lr_at(step)}
            if len(val) and (done % eval_every == 0 or done == steps):
                entry["val_dice"] = evaluate_dice(model, val, mean, std, config.threshold, device)
                log.info("step %d/%d loss %.4f val Dice %.4f", done, steps, loss_value, entry["val_dice"])
                history.append(entry)
            elif done == steps:
                history.append(entry)
            message = f"loss {loss_value:.4f}" + (f", val Dice {entry['val_dice']:.4f}" if "val_dice" in entry else "")
            progress(done, steps, message)
    model.eval()
    val_dice = next((h["val_dice"] for h in reversed(history) if "val_dice" in h), None)
    return TrainResult(model, history, val_dice, len(train), len(val), steps, time.monotonic() - start, loss_value)


def held_out_dice(model: nn.Module, data: SegmentationDataset, config: TrainConfig,
                  device: torch.device | str | None = None) -> float:
    """``evaluate_dice`` on a separate dataset with the training config's normalisation and threshold."""
    norm = config.normalization or {}
    mean = torch.tensor(norm.get("mean", [0.0] * 3), dtype=torch.float32)
    std = torch.tensor(norm.get("std", [1.0] * 3), dtype=torch.float32)
    return evaluate_dice(model, data, mean, std, config.threshold, None if device is None else torch.device(device))
