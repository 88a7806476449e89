"""LDM ResBlock, Downsample and Upsample (parameter names as in LDM checkpoints)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the time embedding, then GroupNorm-SiLU-conv; skip projection."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(ops.GroupNorm(groups, channels, eps=eps), nn.SiLU(),
                                       ops.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(ops.GroupNorm(groups, out_channels, eps=eps), nn.SiLU(),
                                        nn.Dropout(0.0), ops.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection: nn.Module = (nn.Identity() if out_channels == channels
                                           else ops.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)
        h = h + e[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (``op``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = ops.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x (or to the skip's size) then a 3x3 convolution (``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, output_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        if output_shape is not None:
            x = F.interpolate(x, size=tuple(output_shape[-2:]), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)
