"""Models and data for the segmentation pipeline tests, made by code.

``TextureNet`` is a fixed (not trained) convolutional detector of fine texture: local variance
around a blurred mean, then a logistic. Its receptive field (about 2 x 9 px) makes tiled and
whole-image inference differ only near tile seams, which is what blending must hide.
``PointwiseNet`` is a 1x1 convolution: its output at a pixel depends on that pixel only, so any
correct tiling reproduces the whole-image result exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def gaussian_1d(sigma: float) -> torch.Tensor:
    radius = int(math.ceil(3 * sigma))
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-xs ** 2 / (2 * sigma ** 2))
    return k / k.sum()


class TextureNet(nn.Module):
    """logit = gain * (blur((x - blur(x))^2) - offset), on the channel mean; one output channel."""

    def __init__(self, sigma: float = 1.5, gain: float = 60.0, offset: float = 0.01) -> None:
        super().__init__()
        self.register_buffer("kernel", gaussian_1d(sigma))
        self.scale = nn.Parameter(torch.tensor(float(gain)))
        self.offset = offset
        self.config = {"architecture": "texture_net", "in_channels": 3, "out_channels": 1}
        self.size_divisor = 1

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        r = k.numel() // 2
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = x.mean(1, keepdim=True)
        variance = self._blur((gray - self._blur(gray)) ** 2)
        return self.scale * (variance - self.offset) * 100.0


class PointwiseNet(nn.Module):
    """A seeded 1x1 convolution (bias included): pixel-local logits for K classes."""

    def __init__(self, in_channels: int = 3, classes: int = 1, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(in_channels, classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 2)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=gen))
        self.config = {"architecture": "pointwise", "in_channels": in_channels, "out_channels": classes}
        self.size_divisor = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def plain_meta(classes: int = 1, names: list[str] | None = None) -> dict:
    """A meta dict with identity normalisation."""
    if names is None:
        names = ["foreground"] if classes == 1 else ["background"] + [f"class_{i}" for i in range(1, classes)]
    return {"normalization": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}, "class_names": names,
            "threshold": 0.5}


def peak_rss_reset() -> bool:
    """Reset the process's peak RSS (VmHWM) so later reads measure from now; False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """The process's peak resident set size in bytes (VmHWM)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def current_rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status")


def flood_components(mask, connectivity: int = 8):
    """Reference connected components: breadth-first flood fill, pixel by pixel -> (labels, count)."""
    h, w = mask.shape
    labels = np.zeros((h, w), int)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    count = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not labels[y, x]:
                count += 1
                labels[y, x] = count
                todo = [(y, x)]
                while todo:
                    cy, cx = todo.pop()
                    for dy, dx in steps:
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                            labels[ny, nx] = count
                            todo.append((ny, nx))
    return labels, count
