"""Volumes: 3D sliding-window inference, synthetic volumes, 3D augmentation and training."""
