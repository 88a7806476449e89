"""Attention gates: diffusion skip gates and the gate module shared with segmentation."""
