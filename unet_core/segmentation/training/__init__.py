"""Segmentation training: datasets, augmentation, losses, the training loop, synthetic data."""
