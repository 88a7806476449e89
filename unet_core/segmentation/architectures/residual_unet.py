"""Residual U-Net: the U-Net layout with residual double-conv blocks.

Every double conv of :class:`~.unet.UNet` becomes a :class:`~..blocks.ResidualDoubleConv`
(conv-norm-ReLU-conv-norm plus an identity or 1x1-projection shortcut, then ReLU), as in
ResUNet-style models; pooling, upsampling and skip concatenation are unchanged.
"""

from __future__ import annotations

from .blocks import ResidualDoubleConv
from .unet import UNet


class ResidualUNet(UNet):
    """U-Net with residual blocks (module names as :class:`UNet`, block internals differ)."""

    architecture = "residual_unet"
    block = ResidualDoubleConv
