"""The additive attention gate of Attention U-Net (Oktay et al., 2018).

Given skip features ``x`` [B, C_x, H, W] and a coarser gating signal ``g``
[B, C_g, h, w], the gate computes

    q     = ReLU(W_x * x + W_g * up(g) + b)          (1x1 convolutions to C_int channels)
    alpha = sigmoid(psi * q + b_psi)                 (one channel, in (0, 1))
    out   = alpha * x

where ``up`` resamples the gating signal to the skip's resolution (bilinear).
The same module serves the segmentation Attention U-Net and trained diffusion
skip gates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdditiveAttentionGate(nn.Module):
    """``alpha = sigmoid(psi(ReLU(W_g g + W_x x + b)))``; returns ``alpha * x`` and ``alpha``."""

    def __init__(self, skip_channels: int, gating_channels: int, inter_channels: int | None = None,
                 norm: type[nn.Module] | None = nn.BatchNorm2d) -> None:
        super().__init__()
        inter = inter_channels or max(skip_channels // 2, 1)

        def project(cin: int, cout: int, bias: bool) -> nn.Module:
            conv = nn.Conv2d(cin, cout, kernel_size=1, bias=bias)
            return nn.Sequential(conv, norm(cout)) if norm is not None else nn.Sequential(conv)

        self.W_g = project(gating_channels, inter, bias=True)
        self.W_x = project(skip_channels, inter, bias=False)
        self.psi = project(inter, 1, bias=True)

    def attention(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The gate map alpha, [B, 1, H, W] at the skip's resolution."""
        gate = self.W_g(g)
        if gate.shape[-2:] != x.shape[-2:]:
            gate = F.interpolate(gate, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.psi(F.relu(gate + self.W_x(x))))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.attention(x, g)
        return x * alpha, alpha
