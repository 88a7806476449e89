"""Building blocks shared by the segmentation architectures.

Everything here is plain ``torch.nn``: a normalisation factory, the (conv, norm, ReLU) x 2
block in the key layout of milesial/Pytorch-UNet (``double_conv.{0,1,3,4}``), its residual
variant, and the pad/crop helpers that let every model take any image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group", "instance", "none")
PAD_MODES = ("reflect", "replicate", "zeros")


def make_norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """A normalisation layer over ``channels``: batch, group (up to 32 groups), instance or none.

    ``dims``: 2 for images [B, C, H, W], 3 for volumes [B, C, D, H, W] (BatchNorm3d, InstanceNorm3d).
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 32), channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


def norm_factory(kind: str) -> Callable[[int], nn.Module]:
    """``make_norm`` bound to one kind, for modules that take a norm constructor."""
    return lambda channels: make_norm(kind, channels)


def conv3x3(cin: int, cout: int, norm: str) -> nn.Conv2d:
    """3x3 'same' convolution; bias only when no normalisation follows (it would be cancelled)."""
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=(norm == "none"))


class DoubleConv(nn.Module):
    """(conv3x3, norm, ReLU) x 2, as ``double_conv`` = Sequential indices 0..5 (milesial keys)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None,
                 norm: str = "batch") -> None:
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            conv3x3(in_channels, mid, norm), make_norm(norm, mid), nn.ReLU(inplace=True),
            conv3x3(mid, out_channels, norm), make_norm(norm, out_channels), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class ResidualDoubleConv(nn.Module):
    """Residual block: ReLU(norm(conv(ReLU(norm(conv x)))) + shortcut(x)).

    The shortcut is the identity when the channel count is kept, else a 1x1 projection
    (conv + norm), as in He et al. (2016) option B.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None,
                 norm: str = "batch") -> None:
        super().__init__()
        mid = mid_channels or out_channels
        self.conv1 = conv3x3(in_channels, mid, norm)
        self.norm1 = make_norm(norm, mid)
        self.conv2 = conv3x3(mid, out_channels, norm)
        self.norm2 = make_norm(norm, out_channels)
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=(norm == "none")),
                make_norm(norm, out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)), inplace=True)
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x), inplace=True)


def match_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Zero-pad (or crop) ``x`` at the bottom/right to ``ref``'s spatial size.

    The models pad their input to a multiple of their divisor, so sizes match already;
    this keeps a decoder correct when a caller bypasses that padding.
    """
    dh, dw = ref.shape[-2] - x.shape[-2], ref.shape[-1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


def pad_to_multiple(x: torch.Tensor, divisor: int, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x`` [B,C,H,W] at the bottom and right up to multiples of ``divisor``.

    ``reflect`` mirrors the image without repeating the edge row; when the pad is larger
    than the image allows (reflect needs pad < size) it falls back to ``replicate``.
    ``zeros`` pads with 0. Returns the padded tensor and the original (H, W) for cropping.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph == 0 and pw == 0:
        return x, (h, w)
    if mode == "zeros":
        return F.pad(x, [0, pw, 0, ph]), (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"
    return F.pad(x, [0, pw, 0, ph], mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: keep the top-left ``size`` of ``x``."""
    return x[..., : size[0], : size[1]]
