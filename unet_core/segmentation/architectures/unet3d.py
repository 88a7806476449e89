"""3D U-Net (Çiçek et al., 2016) for volumes: [B, C, D, H, W] -> logits [B, K, D, H, W].

Level ``l`` (0..depth) holds ``base_channels * 2**l`` channels in a block of two 3x3x3
convolutions, each followed by the norm (``batch``, ``group`` with up to 32 groups,
``instance`` or ``none``) and ReLU (``encoder.{l}``, ``decoder.{l}``; a plain ``nn.Sequential``,
so the fast path folds BatchNorm as in 2D). ``residual=True`` uses the residual block instead
(``ReLU(norm(conv(ReLU(norm(conv x)))) + shortcut(x))``, a 1x1x1 projection where the width
changes).

Anisotropic pooling: ``pool_z`` (one boolean per downsampling, all true by default) says which
levels pool along z (2x2x2 max pool) and which pool in-plane only (1x2x2), with matching
up-sampling on the way back. :func:`plan_z_pooling` picks it from the patch depth and the
z-spacing ratio: z is pooled only when the current z size stays at least ``min_z`` and z is
no coarser than twice the in-plane spacing at that level (the nnU-Net rule), so thin stacks
and anisotropic scans keep their few slices.

Up-sampling (``up.{l}``): ``transpose`` is a transposed convolution with kernel = stride = the
pooling window, halving the channels; ``trilinear`` is trilinear interpolation
(align_corners=False) followed by a 1x1x1 convolution to the same width. The decoder block sees
``[skip, upsampled]``. The head ``head`` is a 1x1x1 convolution.

Any input size works: ``forward`` pads each axis at the end up to the network's multiple
(``size_divisor``: ``(2**nz, 2**depth, 2**depth)``), ``reflect`` falling back to ``replicate``
where the pad is larger than the axis, and crops the logits back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import SegmentationError
from .base import COMMON_DEFAULTS, SegmentationUNet, resolve_hparams
from .blocks import make_norm

UPSAMPLINGS_3D = ("transpose", "trilinear")


def double_conv3d(cin: int, cout: int, norm: str) -> nn.Sequential:
    """(conv3x3x3, norm, ReLU) x 2 as indices 0..5; conv bias only without a norm."""
    bias = norm == "none"
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=bias), make_norm(norm, cout, 3), nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=bias), make_norm(norm, cout, 3), nn.ReLU(inplace=True))


class ResidualBlock3d(nn.Module):
    """ReLU(norm2(conv2(ReLU(norm1(conv1 x)))) + shortcut(x)); shortcut = 1x1x1 conv + norm when widths differ."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1, bias=bias)
        self.norm1 = make_norm(norm, cout, 3)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=bias)
        self.norm2 = make_norm(norm, cout, 3)
        self.shortcut: nn.Module = (nn.Sequential(nn.Conv3d(cin, cout, 1, bias=bias), make_norm(norm, cout, 3))
                                    if cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)), inplace=True)
        return F.relu(self.norm2(self.conv2(h)) + self.shortcut(x), inplace=True)


def plan_z_pooling(depth: int, patch_depth: int, z_ratio: float = 1.0, min_z: int = 4) -> list[bool]:
    """Which of ``depth`` downsamplings may pool z for patches ``patch_depth`` slices deep.

    ``z_ratio`` is the z spacing over the in-plane spacing (1 for isotropic voxels, 5 for a
    CT with 5 mm slices at 1 mm pixels). A level pools z when the z size after pooling is still
    at least ``min_z`` and z spacing is at most twice the in-plane spacing there.
    """
    plan, size, ratio = [], int(patch_depth), float(z_ratio)
    for _ in range(depth):
        pool = size // 2 >= min_z and ratio <= 2.0
        plan.append(pool)
        if pool:
            size //= 2
        else:
            ratio /= 2.0  # in-plane spacing doubles, z stays
    return plan


def pad_volume(x: torch.Tensor, divisor: tuple[int, int, int], mode: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad [B, C, D, H, W] at the end of each axis to multiples of ``divisor``; returns it and (D, H, W)."""
    size = tuple(x.shape[-3:])
    pads = [(-s) % d for s, d in zip(size, divisor, strict=True)]
    if not any(pads):
        return x, size
    flat = [0, pads[2], 0, pads[1], 0, pads[0]]
    if mode == "zeros":
        return F.pad(x, flat), size
    if mode == "reflect" and any(p >= s for p, s in zip(pads, size, strict=True)):
        mode = "replicate"
    return F.pad(x, flat, mode=mode), size


class UNet3D(SegmentationUNet):
    """3D U-Net with batch/group norm, anisotropic pooling, transposed or trilinear up-sampling, residual option."""

    architecture = "unet3d"
    spatial_dims = 3
    upsamplings = UPSAMPLINGS_3D
    defaults: dict[str, Any] = {**COMMON_DEFAULTS, "in_channels": 1, "depth": 3, "base_channels": 16,
                                "residual": False, "pool_z": None}

    @staticmethod
    def validate(cfg: dict[str, Any]) -> None:
        if cfg["upsampling"] not in UPSAMPLINGS_3D:
            raise SegmentationError(f"hyper-parameter upsampling={cfg['upsampling']!r} must be one of "
                                    f"{list(UPSAMPLINGS_3D)} for unet3d")
        if not isinstance(cfg["residual"], bool):
            raise SegmentationError(f"hyper-parameter residual={cfg['residual']!r} must be true or false")
        pool_z = cfg["pool_z"]
        if pool_z is not None and (not isinstance(pool_z, list | tuple) or len(pool_z) != cfg["depth"]
                                   or not all(isinstance(p, bool) for p in pool_z)):
            raise SegmentationError(f"hyper-parameter pool_z={pool_z!r} must be null or {cfg['depth']} "
                                    "true/false values (one per downsampling)")

    @classmethod
    def build(cls, **hparams: Any) -> UNet3D:
        """Validated construction (defaults filled in), as the registry's ``build_model("unet3d", ...)``."""
        cfg = resolve_hparams(cls.architecture, cls.defaults, hparams, UPSAMPLINGS_3D)
        cls.validate(cfg)
        return cls(**cfg)

    def __init__(self, **config: Any) -> None:
        cfg = {**self.defaults, **config}
        depth = cfg["depth"]
        cfg["pool_z"] = [True] * depth if cfg["pool_z"] is None else [bool(p) for p in cfg["pool_z"]]
        super().__init__(cfg)
        norm, base = cfg["norm"], cfg["base_channels"]
        ch = [base * 2 ** level for level in range(depth + 1)]
        block = (lambda i, o: ResidualBlock3d(i, o, norm)) if cfg["residual"] else (lambda i, o: double_conv3d(i, o, norm))
        self.windows = [(2 if z else 1, 2, 2) for z in cfg["pool_z"]]
        self.encoder = nn.ModuleList(block(cfg["in_channels"] if lvl == 0 else ch[lvl - 1], ch[lvl])
                                     for lvl in range(depth + 1))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for lvl in range(depth):
            win = self.windows[lvl]
            if cfg["upsampling"] == "transpose":
                self.up.append(nn.ConvTranspose3d(ch[lvl + 1], ch[lvl], kernel_size=win, stride=win))
            else:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=win, mode="trilinear", align_corners=False),
                                             nn.Conv3d(ch[lvl + 1], ch[lvl], 1)))
            self.decoder.append(block(2 * ch[lvl], ch[lvl]))
        self.head = nn.Conv3d(ch[0], cfg["out_channels"], 1)

    @property
    def size_divisor(self) -> tuple[int, int, int]:  # type: ignore[override]
        depth = self.config["depth"]
        return (2 ** sum(self.config["pool_z"]), 2 ** depth, 2 ** depth)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise SegmentationError(f"unet3d: expected a volume batch [B, C, D, H, W], got {shape}"
                                    + (" (a 2D image batch: use a 2D model, or add a depth axis)"
                                       if isinstance(x, torch.Tensor) and x.ndim == 4 else ""))
        if x.shape[1] != self.in_channels:
            raise SegmentationError(f"unet3d: the model takes {self.in_channels} input channel(s), got {x.shape[1]}")
        if not x.is_floating_point():
            raise SegmentationError(f"unet3d: expected a float volume, got {x.dtype}")

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.encoder[0](x)]
        for lvl, win in enumerate(self.windows, 1):
            skips.append(self.encoder[lvl](F.max_pool3d(skips[-1], win, win)))
        h = skips.pop()
        for lvl in range(self.config["depth"] - 1, -1, -1):
            h = self.decoder[lvl](torch.cat([skips.pop(), self.up[lvl](h)], 1))
        return self.head(h)

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check_input(x)
        xp, size = pad_volume(x, self.size_divisor, self.config.get("pad_mode", "reflect"))
        out = self.forward_padded(xp)
        return [out[..., : size[0], : size[1], : size[2]]]
