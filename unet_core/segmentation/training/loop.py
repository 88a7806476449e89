"""Train a segmentation U-Net on a :class:`~.data.SegmentationDataset`, on the CPU or a GPU.

AdamW, a cosine (with a short linear warm-up) or constant learning rate, batches of random
patches (:mod:`.patches`: ``patch_size`` px, by default from the image sizes and the device;
a share of each batch centred on foreground), optional augmentation (flips, 90-degree turns,
brightness/contrast, elastic), a loss from :mod:`.losses` with the optional border weight map
(built once per training mask, cropped and moved with its patch), and a held-out validation
split evaluated on whole images with the Dice score; with one image and a validation fraction
above 0, a tile of that image is held out instead (said in the report). The step
(:mod:`.train_step`) runs in bf16 autocast with channels_last and fused AdamW on CUDA, float32
on the CPU. All randomness comes from ``seed``: the split from one generator, and each sample of
each step (image, patch, augmentation) from its own generator seeded by (seed, step, sample), so
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
from .border_weights import border_weight_map
from .data import SegmentationDataset
from .losses import LOSSES
from .patches import PatchSampler, default_patch_size, hold_out_tile
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
from .train_step import TrainStep, step_options

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
    patch_size: int = 0           # 0: from the image sizes and the device (default_patch_size)
    foreground_fraction: float = 0.33  # share of each batch's patches centred on foreground
    speed: str = "auto"           # Segment Image's speed names: see train_step.step_options
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
    validation: str = ""          # how the validation split was made (or why there is none)
    setup: str = ""               # patch size, batch and the step's precision and device

    def report(self) -> str:
        """A short human-readable summary."""
        lines = [f"trained {self.steps} steps on {self.train_count} image(s) in {self.seconds:.2f} s; "
                 f"final loss {self.loss:.4f}"]
        if self.setup:
            lines.append(self.setup)
        if self.validation:
            lines.append(self.validation)
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
    """(train, validation) indices; at least one training image, and at least one validation image
    whenever the fraction is above 0 and there are two or more images (a fraction is never dropped)."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"validation fraction {val_fraction}: expected 0 <= fraction < 1")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    val = min(max(int(round(count * val_fraction)), 1 if val_fraction > 0 else 0), count - 1)
    return sorted(order[val:]), sorted(order[:val])


def _normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


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


def _samples(sampler: PatchSampler, slots: range, step: int,
             config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """This rank's patches of step ``step``: images [b, C, h, w], masks [b, h, w], weights [b, h, w] or None.

    Sample ``slot`` draws its image, patch and augmentation from its own generator
    (``ranks.sample_generator``), so a step's samples do not depend on how ranks share them; the
    last ``round(batch * foreground_fraction)`` slots of the global batch are centred on foreground.
    """
    forced_from = config.batch_size - sampler.forced_count(config.batch_size)
    images, masks, weights = [], [], []
    for slot in slots:
        generator = sample_generator(config.seed, step, slot)
        index = int(torch.randint(0, len(sampler.images), (), generator=generator))
        y, x, _ = sampler.origin(index, slot >= forced_from, generator)
        image, mask, weight = sampler.crop(index, y, x)
        image = image.permute(2, 0, 1)
        if config.augment is not None:
            image, mask, weight = augment_pair(image, mask, config.augment, generator, weight)
        images.append(image)
        masks.append(mask)
        weights.append(weight)
    stacked = None if weights[0] is None else torch.stack(weights)
    return torch.stack(images), torch.stack(masks), stacked


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

    train, val, validation = split_for_validation(dataset, config.val_fraction, config.seed)
    heights = [m.shape[0] for m in train.masks]
    widths = [m.shape[1] for m in train.masks]
    if config.patch_size > 0:
        patch = (min(config.patch_size, min(heights)), min(config.patch_size, min(widths)))
    else:
        patch = default_patch_size(heights, widths, device)
    place = (lambda t: t.to(device)) if device.type == "cuda" else (lambda t: t)  # patches cut where the model runs
    weight_maps = [place(w) for w in _weight_maps(train, classes, config)] if config.border_weights else None
    sampler = PatchSampler([place(i) for i in train.images], [place(m) for m in train.masks], patch,
                           config.foreground_fraction, weight_maps)
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
    options = step_options(device, config.speed)
    model.to(device, memory_format=torch.channels_last if options.channels_last else torch.preserve_format).train()
    trainee = prepare_model(model, context)
    train_step = TrainStep(trainee, options, config.lr, config.weight_decay, config.loss,
                           loss_fn=lambda logits, target, weights: global_batch_loss(logits, target, config.loss,
                                                                                     weights, context))
    setup = (f"patches {patch[1]} x {patch[0]} px, batch {config.batch_size}, "
             f"{100 * config.foreground_fraction:.0f} % centred on foreground; {options.describe()}")
    history: list[dict[str, float]] = []
    start = time.monotonic()
    loss_value = float("nan")
    with _threads(config.threads):
        for step in range(steps):
            images, masks, weights = _samples(sampler, share.slots, step, config)
            train_step.set_lr(lr_at(step))
            with distributed.guard(f"training step {step + 1}"):
                loss_value = train_step(_normalise(images, place(mean), place(std)), _targets(masks, classes),
                                        weights)
            if not math.isfinite(loss_value):
                raise SegmentationError(f"training diverged at step {step + 1} (loss {loss_value}); "
                                        "lower the learning rate")
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
    if options.channels_last:
        model.to(memory_format=torch.contiguous_format)
    val_dice = next((h["val_dice"] for h in reversed(history) if "val_dice" in h), None)
    return TrainResult(model, history, val_dice, len(train), len(val), steps, time.monotonic() - start, loss_value,
                       validation, setup)


def split_for_validation(dataset: SegmentationDataset, fraction: float,
                         seed: int) -> tuple[SegmentationDataset, SegmentationDataset, str]:
    """(train, validation, what was done): whole images held out, or with one image a tile of it."""
    if fraction <= 0:
        return dataset, dataset.subset([]), "no validation (validation fraction 0)"
    if len(dataset) >= 2:
        train_idx, val_idx = split_indices(len(dataset), fraction, seed)
        return (dataset.subset(train_idx), dataset.subset(val_idx),
                f"validation: {len(val_idx)} of {len(dataset)} image(s) held out")
    split = hold_out_tile(dataset.images[0], dataset.masks[0], fraction)
    name = dataset.names[0]
    return (SegmentationDataset([split.train_image], [split.train_mask], [name]),
            SegmentationDataset([split.val_image], [split.val_mask], [f"{name} (tile)"]),
            f"validation: one image, so {split.description} of {name} held out as a tile")


def _weight_maps(train: SegmentationDataset, classes: int, config: TrainConfig) -> list[torch.Tensor]:
    """The border weight map of each training mask, once (patches crop it)."""
    maps = []
    for mask in train.masks:
        labels = _targets(mask, classes).long().numpy()
        maps.append(torch.from_numpy(border_weight_map(labels, config.border_w0, config.border_sigma)))
    return maps


def held_out_dice(model: nn.Module, data: SegmentationDataset, config: TrainConfig,
                  device: torch.device | str | None = None) -> float:
    """``evaluate_dice`` on a separate dataset with the training config's normalisation and threshold."""
    norm = config.normalization or {}
    mean = torch.tensor(norm.get("mean", [0.0] * 3), dtype=torch.float32)
    std = torch.tensor(norm.get("std", [1.0] * 3), dtype=torch.float32)
    return evaluate_dice(model, data, mean, std, config.threshold, None if device is None else torch.device(device))
