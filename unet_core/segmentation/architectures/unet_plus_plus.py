"""UNet++ (Zhou et al., 2018): nested, densely connected skip pathways.

Nodes ``X^{i,j}`` (level ``i`` = 0..depth, column ``j`` = 0..depth-i) each hold
``base_channels * 2**i`` channels. Column 0 is the encoder (``X^{i,0}`` = double conv of the
2x2-max-pooled ``X^{i-1,0}``); every other node is a double conv of the concatenation
``[X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})]``, where ``up`` is a 2x2 stride-2 transposed
convolution (or bilinear upsampling + 1x1 convolution) to level ``i``'s width.
Module names: ``nodes.x_{i}_{j}``, ``ups.x_{i}_{j}`` (the upsampling into node i,j) and
``heads.x_0_{j}``.

``deep_supervision=True`` adds a 1x1 head on every ``X^{0,j}`` (j >= 1): ``forward`` returns
the mean of the heads' logits, ``forward_heads`` each of them (for a loss per head, or to prune
the network at inference by picking a shallower head). Without it there is one head on
``X^{0,depth}``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import SegmentationError
from .base import COMMON_DEFAULTS, SegmentationUNet
from .blocks import DoubleConv, match_size


def _upsampler(cin: int, cout: int, mode: str) -> nn.Module:
    if mode == "transpose":
        return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         nn.Conv2d(cin, cout, kernel_size=1))


class UNetPlusPlus(SegmentationUNet):
    """UNet++ with optional deep supervision."""

    architecture = "unet_plus_plus"
    defaults: dict[str, Any] = {**COMMON_DEFAULTS, "deep_supervision": False}

    @staticmethod
    def validate(cfg: dict[str, Any]) -> None:
        if not isinstance(cfg["deep_supervision"], bool):
            raise SegmentationError(f"hyper-parameter deep_supervision={cfg['deep_supervision']!r} must be true or false")

    def __init__(self, **config: Any) -> None:
        cfg = {**self.defaults, **config}
        super().__init__(cfg)
        depth, norm = cfg["depth"], cfg["norm"]
        ch = [cfg["base_channels"] * 2 ** i for i in range(depth + 1)]
        self.pool = nn.MaxPool2d(2)
        self.nodes = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for i in range(depth + 1):
            cin = cfg["in_channels"] if i == 0 else ch[i - 1]
            self.nodes[f"x_{i}_0"] = DoubleConv(cin, ch[i], norm=norm)
        for j in range(1, depth + 1):
            for i in range(depth - j + 1):
                self.ups[f"x_{i}_{j}"] = _upsampler(ch[i + 1], ch[i], cfg["upsampling"])
                self.nodes[f"x_{i}_{j}"] = DoubleConv(ch[i] * (j + 1), ch[i], norm=norm)
        columns = range(1, depth + 1) if cfg["deep_supervision"] else [depth]
        self.heads = nn.ModuleDict({f"x_0_{j}": nn.Conv2d(ch[0], cfg["out_channels"], kernel_size=1)
                                    for j in columns})

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        depth = self.config["depth"]
        grid: dict[tuple[int, int], torch.Tensor] = {(0, 0): self.nodes["x_0_0"](x)}
        for i in range(1, depth + 1):
            grid[(i, 0)] = self.nodes[f"x_{i}_0"](self.pool(grid[(i - 1, 0)]))
        for j in range(1, depth + 1):
            for i in range(depth - j + 1):
                up = match_size(self.ups[f"x_{i}_{j}"](grid[(i + 1, j - 1)]), grid[(i, 0)])
                dense = [grid[(i, k)] for k in range(j)]
                grid[(i, j)] = self.nodes[f"x_{i}_{j}"](torch.cat(dense + [up], dim=1))
        heads = [head(grid[(0, int(name.rsplit("_", 1)[1]))]) for name, head in self.heads.items()]
        return heads if self.config["deep_supervision"] else heads[0]
