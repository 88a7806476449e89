"""One optimiser step of segmentation training, set up for the device: precision, memory layout, optimiser.

``step_options(device, speed)`` turns the Segment Image speed names into training settings:

- ``exact`` (and ``auto`` off CUDA): float32, eager, the default memory layout, ``torch.optim.AdamW``;
- ``fast`` (and ``auto`` on CUDA): bfloat16 autocast for the forward pass (float32 where the
  GPU has no bfloat16), fp32 master weights and loss, ``channels_last`` tensors, and AdamW's
  fused CUDA kernel (``fused=True``);
- ``compiled``: ``fast`` with the model's forward under ``torch.compile`` (through
  :class:`~...compiling.CompiledCall`: a compile failure falls back to eager, once, with a warning).

A :class:`TrainStep` holds the module to train (the model, or its DistributedDataParallel
wrapper), the optimiser and those options; calling it runs forward, loss (in float32, on the
logits cast up; ``loss_fn`` may replace the plain loss, e.g. by the global batch's loss under
torchrun), backward and the optimiser step, and returns the loss value. The parameters stay
float32 throughout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ...compiling import CompiledCall
from ...errors import InputError
from ..inference.device_io import SEGMENT_SPEEDS
from .losses import segmentation_loss

log = logging.getLogger(__name__)

# (logits float32 [B, K, H, W], target [B, H, W], weights [B, H, W] or None) -> (loss to backward, value)
LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], tuple[torch.Tensor, float]]


@dataclass(frozen=True)
class StepOptions:
    """How a training step runs (see the module docstring)."""

    device: torch.device
    autocast_dtype: torch.dtype | None   # None: float32 throughout
    channels_last: bool
    fused_optimizer: bool
    compiled: bool

    def describe(self) -> str:
        precision = "float32" if self.autocast_dtype is None else f"{str(self.autocast_dtype).split('.')[-1]} autocast"
        parts = [precision, "channels_last" if self.channels_last else "", "fused AdamW" if self.fused_optimizer else "",
                 "compiled" if self.compiled else ""]
        return f"{self.device.type}: " + ", ".join(p for p in parts if p)


def step_options(device: torch.device | str, speed: str = "auto") -> StepOptions:
    """The training settings for ``speed`` (one of SEGMENT_SPEEDS) on ``device``."""
    device = torch.device(device)
    if speed not in SEGMENT_SPEEDS:
        raise InputError(f"training speed {speed!r}: expected one of {list(SEGMENT_SPEEDS)}")
    cuda = device.type == "cuda"
    if speed == "exact" or (speed == "auto" and not cuda):
        return StepOptions(device, None, False, False, False)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return StepOptions(device, torch.bfloat16 if bf16 else None, cuda, cuda, speed == "compiled")


class TrainStep:
    """Forward, loss, backward and AdamW step for ``model`` with ``options`` (see the module docstring)."""

    def __init__(self, model: nn.Module, options: StepOptions, lr: float, weight_decay: float,
                 loss: str = "ce+dice", loss_fn: LossFn | None = None) -> None:
        self.model, self.options, self.loss_kind = model, options, loss
        self.loss_fn = loss_fn or self._plain_loss
        memory_format = torch.channels_last if options.channels_last else torch.preserve_format
        model.to(device=options.device, memory_format=memory_format)
        fused = {"fused": True} if options.fused_optimizer else {}
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, **fused)
        self.forward = CompiledCall(model, "segmentation training forward") if options.compiled else model

    def _plain_loss(self, logits: torch.Tensor, target: torch.Tensor,
                    weights: torch.Tensor | None) -> tuple[torch.Tensor, float]:
        loss = segmentation_loss(logits, target, self.loss_kind, weights)
        return loss, float(loss.detach())

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(self, images: torch.Tensor, target: torch.Tensor,
                 weights: torch.Tensor | None = None) -> float:
        """One step on images [B, C, H, W] and target [B, H, W] (on any device); the loss value."""
        options = self.options
        device = options.device
        images = images.to(device, non_blocking=True)
        if options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        weights = None if weights is None else weights.to(device, non_blocking=True)
        # deep supervision (U-Net 3+): the model weighs every head's loss; a DDP wrapper hides the
        # method, so a distributed run trains on the heads' weighted mean that forward returns
        supervised = getattr(self.model, "supervised_loss", None)
        with torch.autocast(device.type, dtype=options.autocast_dtype or torch.float32,
                            enabled=options.autocast_dtype is not None):
            if supervised is not None:
                loss = supervised(images, target, lambda logits, t: self.loss_fn(logits.float(), t, weights)[0])
            else:
                logits = self.forward(images)
        if supervised is not None:
            value = float(loss.detach())
        else:
            loss, value = self.loss_fn(logits.float(), target, weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return value
