"""Attention U-Net (Oktay et al., 2018): a U-Net whose skips pass through additive gates.

Encoder as :class:`~.unet.UNet` (``inc``, ``down{i}``, full width at every level). Decoder step
``up{i}`` (level ``l = depth - i``) takes the coarser decoder map ``h`` (``2C`` channels) and the
skip ``s`` (``C``): it gates the skip with the shared
:class:`~unet_core.gates.additive.AdditiveAttentionGate` using ``h`` as the gating signal
(resampled to the skip's size inside the gate, as in the paper's coarse gating), upsamples
``h`` to ``C`` channels (2x2 transposed conv, or bilinear + 1x1 conv) and double-convs
``[gated skip, upsampled]``. The gate's inner width is ``gate_inter_ratio * C`` (0.5 by
default, the paper's F_int = F_l / 2); its projections use BatchNorm when ``norm="batch"`` and
no norm otherwise (a one-channel psi map has nothing to group- or instance-normalise).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import SegmentationError
from ...gates.additive import AdditiveAttentionGate
from .base import COMMON_DEFAULTS, SegmentationUNet
from .blocks import DoubleConv, match_size
from .unet import Down, OutConv, UNet
from .unet_plus_plus import _upsampler


class AttentionUp(nn.Module):
    """Gate the skip with the coarse map, upsample the coarse map, concatenate, double conv."""

    def __init__(self, cin: int, cout: int, norm: str, upsampling: str, inter: int) -> None:
        super().__init__()
        self.gate = AdditiveAttentionGate(cout, cin, inter, nn.BatchNorm2d if norm == "batch" else None)
        self.up = _upsampler(cin, cout, upsampling)
        self.conv = DoubleConv(2 * cout, cout, norm=norm)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        gated, _ = self.gate(skip, deep)
        up = match_size(self.up(deep), skip)
        return self.conv(torch.cat([gated, up], dim=1))


class AttentionUNet(SegmentationUNet):
    """U-Net with an additive attention gate on every skip connection."""

    architecture = "attention_unet"
    defaults: dict[str, Any] = {**COMMON_DEFAULTS, "gate_inter_ratio": 0.5}

    @staticmethod
    def validate(cfg: dict[str, Any]) -> None:
        ratio = cfg["gate_inter_ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 4:
            raise SegmentationError(f"hyper-parameter gate_inter_ratio={ratio!r} must be a number in (0, 4]")

    def __init__(self, **config: Any) -> None:
        cfg = {**self.defaults, **config}
        super().__init__(cfg)
        depth, norm = cfg["depth"], cfg["norm"]
        ch = [cfg["base_channels"] * 2 ** level for level in range(depth + 1)]
        self.inc = DoubleConv(cfg["in_channels"], ch[0], norm=norm)
        for i in range(1, depth + 1):
            setattr(self, f"down{i}", Down(ch[i - 1], ch[i], norm))
        for i in range(1, depth + 1):
            level = depth - i
            inter = max(1, int(round(ch[level] * cfg["gate_inter_ratio"])))
            setattr(self, f"up{i}", AttentionUp(ch[level + 1], ch[level], norm, cfg["upsampling"], inter))
        self.outc = OutConv(ch[0], cfg["out_channels"])

    # Same module names (inc, down{i}, up{i}, outc) as the plain U-Net: its forward serves both.
    forward_padded = UNet.forward_padded

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The gate maps alpha of every skip (finest first), each cropped to the input size."""
        from .blocks import crop_to, pad_to_multiple

        self._check_input(x)
        xp, size = pad_to_multiple(x, self.size_divisor, self.config.get("pad_mode", "reflect"))
        depth = self.config["depth"]
        skips = [self.inc(xp)]
        for i in range(1, depth + 1):
            skips.append(getattr(self, f"down{i}")(skips[-1]))
        h, maps = skips.pop(), []
        for i in range(1, depth + 1):
            skip, block = skips.pop(), getattr(self, f"up{i}")
            maps.append(block.gate.attention(skip, h))
            h = block(h, skip)
        scale = [2 ** (depth - i) for i in range(1, depth + 1)]
        out = [crop_to(a, (-(-size[0] // s), -(-size[1] // s))) for a, s in zip(maps, scale, strict=True)]
        return out[::-1]
