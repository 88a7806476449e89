"""Segmentation architectures: U-Net, UNet++, Attention U-Net, Residual U-Net, smp-layout models; shared blocks."""

from .base import SegmentationUNet

__all__ = ["SegmentationUNet"]
