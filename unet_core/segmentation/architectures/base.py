"""The base class of every segmentation model, and hyper-parameter validation.

A model is built from a flat dict of diffusers-style config fields (``in_channels``,
``out_channels``, ``depth``, ``base_channels``, ``norm``, ``upsampling``, ...). It keeps that
dict as ``.config`` (plus ``"architecture"``), so a checkpoint can store it and rebuild the
model from the file alone.

Any input size works: :meth:`SegmentationUNet.forward` pads the image at the bottom and right
to a multiple of ``size_divisor`` (``pad_mode``: ``reflect`` by default, falling back to
``replicate`` where the pad is larger than the image; or ``replicate``/``zeros``), runs the
network and crops the logits back. Nothing is ever resized.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import SegmentationError
from .blocks import NORMS, PAD_MODES, crop_to, pad_to_multiple

UPSAMPLINGS = ("transpose", "bilinear")

COMMON_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 1,
    "depth": 4,
    "base_channels": 64,
    "norm": "batch",
    "upsampling": "transpose",
    "pad_mode": "reflect",
}


def _positive_int(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rng = f"{low}..{high}" if high is not None else f">= {low}"
        raise SegmentationError(f"hyper-parameter {name}={value!r} must be an integer {rng}")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SegmentationError(f"hyper-parameter {name}={value!r} must be one of {list(choices)}")
    return value


def resolve_hparams(architecture: str, defaults: dict[str, Any], hparams: dict[str, Any],
                    upsamplings: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Merge ``hparams`` over ``defaults``, refusing unknown names; checks the common fields.

    ``upsamplings``: the accepted ``upsampling`` values (default :data:`UPSAMPLINGS`).
    """
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        raise SegmentationError(
            f"{architecture}: unknown hyper-parameter(s) {unknown}; accepted: {sorted(defaults)}")
    cfg = {**defaults, **hparams}
    if "in_channels" in cfg:
        _positive_int("in_channels", cfg["in_channels"])
    if "out_channels" in cfg:
        _positive_int("out_channels", cfg["out_channels"])
    if "depth" in cfg:
        _positive_int("depth", cfg["depth"], 1, 8)
    if "base_channels" in cfg:
        _positive_int("base_channels", cfg["base_channels"], 1, 4096)
    if "norm" in cfg:
        _choice("norm", cfg["norm"], NORMS)
    if "upsampling" in cfg:
        _choice("upsampling", cfg["upsampling"], upsamplings or UPSAMPLINGS)
    if "pad_mode" in cfg:
        _choice("pad_mode", cfg["pad_mode"], PAD_MODES)
    return cfg


class SegmentationUNet(nn.Module):
    """A segmentation network: image [B, C, H, W] float -> logits [B, K, H, W] for any H, W."""

    architecture: str = ""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config: dict[str, Any] = {"architecture": self.architecture, **config}

    @property
    def size_divisor(self) -> int:
        """Input sizes the network itself needs to be multiples of (``forward`` pads to it)."""
        return 2 ** int(self.config.get("depth", 4))

    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def out_channels(self) -> int:
        return int(self.config["out_channels"])

    def hparams(self) -> dict[str, Any]:
        """The config without the architecture name: what ``build_model`` takes back."""
        return {k: v for k, v in self.config.items() if k != "architecture"}

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The network on an input whose size is a multiple of ``size_divisor``."""
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise SegmentationError(f"{self.architecture}: expected an image batch [B, C, H, W], got {shape}")
        if x.shape[1] != self.in_channels:
            raise SegmentationError(
                f"{self.architecture}: the model takes {self.in_channels} input channel(s), got {x.shape[1]}")
        if not x.is_floating_point():
            raise SegmentationError(f"{self.architecture}: expected a float image, got {x.dtype}")

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every output head's logits at the input size (one head unless deep supervision)."""
        self._check_input(x)
        xp, size = pad_to_multiple(x, self.size_divisor, self.config.get("pad_mode", "reflect"))
        out = self.forward_padded(xp)
        heads = out if isinstance(out, list) else [out]
        return [crop_to(h, size) for h in heads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.forward_heads(x)
        if len(heads) == 1:
            return heads[0]
        return torch.stack(heads, 0).mean(0)
