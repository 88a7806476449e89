"""Train a segmentation U-Net on a :class:`~.data.SegmentationDataset`, on the CPU or a GPU.

AdamW, a cosine (with a short linear warm-up) or constant learning rate, random batches of
training images (cropped to ``patch_size`` when sizes differ), optional augmentation (flips,
90-degree turns, brightness/contrast, elastic), a loss from :mod:`.losses` with the optional
border weight map, and a held-out validation split evaluated on whole images with the Dice
score. All randomness comes from ``seed``: the split from one generator, and each sample of
each step (image, crop, augmentation) from its own generator seeded by (seed, step, sample), so
the same seed and the same starting weights give bitwise the same weights on the CPU.

Under a torchrun job (``unet_core.distributed``) the model trains in DistributedDataParallel:
``batch_size`` is the global batch, each rank draws its contiguous share of the step's samples,
the loss is that of the global batch (see :mod:`.ranks`), and validation is split over the
ranks with its counts added up. Every rank ends with the same weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ... import distributed
from ...errors import InputError, SegmentationError
from ...progress import ProgressCallback, no_progress
from ..model import model_channels
from .augment import AugmentConfig, augment_pair
from .data import SegmentationDataset
from .losses import LOSSES, border_weights
from .ranks import (
    all_sum,
    batch_share,
    finish_model,
    global_batch_loss,
    inner_model,
    prepare_model,
    sample_generator,
    sync_buffers,
)

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
        lines = [f"trained {self.steps} steps on {self.train_count} image(s) in {self.seconds:.2f} s; "
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
def dice_counts(model: nn.Module, data: SegmentationDataset, mean: torch.Tensor, std: torch.Tensor,
                threshold: float = 0.5, device: torch.device | None = None) -> tuple[float, float]:
    """(intersection, predicted + true pixels) over ``data``, foreground classes pooled: Dice = 2 i / t."""
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
    return inter, total


def evaluate_dice(model: nn.Module, data: SegmentationDataset, mean: torch.Tensor, std: torch.Tensor,
                  threshold: float = 0.5, device: torch.device | None = None) -> float:
    """Dice over all pixels of ``data`` pooled (foreground classes pooled for multi-class models).

    Under a torchrun job each rank evaluates its share of ``data`` and the counts are added up,
    so every rank gets the Dice of the whole set.
    """
    context = distributed.active()
    if context is not None and context.world_size > 1:
        data = data.subset(distributed.shard_indices(len(data), context.rank, context.world_size))
    inter, total = all_sum(list(dice_counts(model, data, mean, std, threshold, device)), context)
    return 1.0 if total == 0 else 2 * inter / total


def _ordinary_tensors(model: nn.Module) -> None:
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
    """The dataset with any inference-mode tensor copied (see ``_ordinary_tensors``)."""
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
        _ordinary_tensors(model)
        return _train(model, _ordinary_dataset(dataset), config, progress, device)


def _samples(train: SegmentationDataset, slots: range, step: int, config: TrainConfig,
             crop: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's samples of step ``step``: images [b, C, h, w] and masks [b, h, w].

    Sample ``slot`` draws its image, crop and augmentation from its own generator
    (``ranks.sample_generator``), so a step's samples do not depend on how ranks share them.
    """
    images, masks = [], []
    for slot in slots:
        generator = sample_generator(config.seed, step, slot)
        index = int(torch.randint(0, len(train), (), generator=generator))
        image, mask = train.images[index], train.masks[index]
        if crop is not None:
            image, mask = _crop(image, mask, crop[0], crop[1], generator)
        image = image.permute(2, 0, 1)
        if config.augment is not None:
            image, mask = augment_pair(image, mask, config.augment, generator)
        images.append(image)
        masks.append(mask)
    return torch.stack(images), torch.stack(masks)


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
    context = distributed.active()
    share = batch_share(config.batch_size, context)
    model.to(device).train()
    trainee = prepare_model(model, context)
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    start = time.monotonic()
    loss_value = float("nan")
    with _threads(config.threads):
        for step in range(steps):
            images, masks = _samples(train, share.slots, step, config, (ph, pw) if crop else None)
            target = _targets(masks, classes)
            weights = None
            if config.border_weights:
                weights = border_weights(target if classes > 1 else target.long(), config.border_w0,
                                         config.border_sigma).to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            with distributed.guard(f"training step {step + 1}"):
                logits = trainee(_normalise(images, mean, std).to(device))
                loss, loss_value = global_batch_loss(logits, target.to(device), config.loss, weights, context)
                if not math.isfinite(loss_value):
                    raise SegmentationError(f"training diverged at step {step + 1} (loss {loss_value}); "
                                            "lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            done = step + 1
            entry: dict[str, float] = {"step": done, "epoch": done / epoch_steps, "loss": loss_value,
                                       "lr": lr_at(step)}
            if len(val) and (done % eval_every == 0 or done == steps):
                sync_buffers(inner_model(trainee), context)
                entry["val_dice"] = evaluate_dice(inner_model(trainee), val, mean, std, config.threshold, device)
                log.info("step %d/%d loss %.4f val Dice %.4f", done, steps, loss_value, entry["val_dice"])
                history.append(entry)
            elif done == steps:
                history.append(entry)
            message = f"loss {loss_value:.4f}" + (f", val Dice {entry['val_dice']:.4f}" if "val_dice" in entry else "")
            progress(done, steps, message)
    finish_model(model, trainee, context)
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
