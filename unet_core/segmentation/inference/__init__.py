"""Segmentation inference: IMAGE checks, class choice, tiling, device placement, segment() with retry."""
