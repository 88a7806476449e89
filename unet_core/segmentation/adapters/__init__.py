"""Readers for segmentation weights users already have (milesial Pytorch-UNet, smp)."""
