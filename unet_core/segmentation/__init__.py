"""Segmentation U-Nets: architectures, checkpoints, tiled inference, training."""
