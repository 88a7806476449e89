"""Segmentation architectures: U-Net, UNet++, Attention U-Net, Residual U-Net."""

from .base import SegmentationUNet

__all__ = ["SegmentationUNet"]
