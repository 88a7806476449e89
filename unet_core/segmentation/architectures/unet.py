"""The original U-Net (Ronneberger et al., 2015) with BatchNorm, in milesial/Pytorch-UNet's layout.

Parameter names match milesial's ``UNet`` for depth 4 (``inc``, ``down1..4``, ``up1..4``,
``outc``), so its Carvana-style checkpoints load strictly; depth, width and norm are
configurable beyond that layout (the names stay ``down{i}``/``up{i}``).

Channels at level ``l`` are ``base_channels * 2**l``. With ``upsampling="transpose"`` each
decoder step is a 2x2 stride-2 transposed convolution halving the channels; with
``"bilinear"`` (align_corners=True) the bottleneck and every decoder output but the last
carry half the channels instead (milesial's ``factor = 2``), and the double conv's middle
width is half its input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import COMMON_DEFAULTS, SegmentationUNet
from .blocks import DoubleConv, match_size


class Down(nn.Module):
    """2x2 max pool then a double conv (``maxpool_conv.{0,1}``)."""

    def __init__(self, cin: int, cout: int, norm: str, block: type[nn.Module] = DoubleConv) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), block(cin, cout, norm=norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample the deeper map, concatenate [skip, upsampled], double conv."""

    def __init__(self, cin: int, cout: int, norm: str, bilinear: bool,
                 block: type[nn.Module] = DoubleConv) -> None:
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = block(cin, cout, cin // 2, norm=norm)
        else:
            self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
            self.conv = block(cin, cout, norm=norm)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = match_size(self.up(deep), skip)
        return self.conv(torch.cat([skip, up], dim=1))


class OutConv(nn.Module):
    """1x1 convolution to the class logits (``outc.conv``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(SegmentationUNet):
    """Plain U-Net; ``UNet(in_channels=3, out_channels=2)`` is milesial's 31.04 M-parameter model."""

    architecture = "unet"
    defaults: dict[str, Any] = dict(COMMON_DEFAULTS)
    block: type[nn.Module] = DoubleConv

    def __init__(self, **config: Any) -> None:
        cfg = {**self.defaults, **config}
        super().__init__(cfg)
        depth, base, norm = cfg["depth"], cfg["base_channels"], cfg["norm"]
        bilinear = cfg["upsampling"] == "bilinear"
        factor = 2 if bilinear else 1
        ch = [base * 2 ** level for level in range(depth + 1)]
        self.inc = self.block(cfg["in_channels"], ch[0], norm=norm)
        for i in range(1, depth + 1):
            cout = ch[i] // factor if i == depth else ch[i]
            setattr(self, f"down{i}", Down(ch[i - 1], cout, norm, self.block))
        for i in range(1, depth + 1):
            level = depth - i
            cout = ch[level] if i == depth else ch[level] // factor
            setattr(self, f"up{i}", Up(ch[level + 1], cout, norm, bilinear, self.block))
        self.outc = OutConv(ch[0], cfg["out_channels"])

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        depth = self.config["depth"]
        skips = [self.inc(x)]
        for i in range(1, depth + 1):
            skips.append(getattr(self, f"down{i}")(skips[-1]))
        h = skips.pop()
        for i in range(1, depth + 1):
            h = getattr(self, f"up{i}")(h, skips.pop())
        return self.outc(h)
