"""Label images (8/16-bit PNG/TIFF, one integer per object or class) to ComfyUI MASKs.

A label image holds 0 for background and a positive id per object (instance labels, as
StarDist, Cellpose and ImageJ write them) or per class. ``labels_to_mask`` gives the MASK
[pages, H, W] float32 0/1: foreground = label > 0 (``class_id`` None), or label == ``class_id``.
Float label images are rounded to the nearest integer first. Colour label images use their
first channel, unless the channels differ (a colour-coded label image): then every distinct
colour other than black is its own label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .reading import ImageStack


@dataclass
class LabelMask:
    """The MASK, the integer labels it came from, and counts for the node's report."""

    mask: torch.Tensor
    labels: np.ndarray
    label_count: int
    foreground_fraction: float

    def describe(self) -> str:
        return (f"{self.label_count} distinct non-zero label(s); foreground {100 * self.foreground_fraction:.1f} % "
                "of the pixels")


def label_array(stack: ImageStack) -> np.ndarray:
    """Integer labels [pages, H, W] (int64) from a label image (see the module docstring)."""
    pixels = stack.pixels
    if stack.kind == "float":
        pixels = np.rint(pixels)
    pixels = pixels.astype(np.int64)
    if pixels.shape[-1] == 1:
        return pixels[..., 0]
    colour = pixels[..., :3] if pixels.shape[-1] >= 3 else pixels
    if all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(1, colour.shape[-1])):
        return colour[..., 0]
    packed = np.zeros(colour.shape[:-1], dtype=np.int64)
    for c in range(colour.shape[-1]):
        packed = packed * (1 << 20) + colour[..., c]
    _, inverse = np.unique(packed, return_inverse=True)
    inverse = inverse.reshape(packed.shape)
    if (packed == 0).any():
        return inverse  # black (0) sorts first and stays 0
    return inverse + 1


def labels_to_mask(stack: ImageStack, class_id: int | None = None) -> LabelMask:
    """MASK [pages, H, W] float32: label > 0, or label == ``class_id`` (InputError if that id is absent)."""
    labels = label_array(stack)
    name = stack.path.rsplit("/", 1)[-1]
    if class_id is None:
        chosen = labels > 0
    else:
        if class_id <= 0:
            raise InputError(f"{name}: class id must be at least 1 (0 is background), got {class_id}")
        chosen = labels == class_id
        if not chosen.any():
            present = np.unique(labels)
            shown = ", ".join(str(v) for v in present[:12]) + (" ..." if present.size > 12 else "")
            raise InputError(f"{name}: no pixel has label {class_id}; labels present: {shown}")
    count = int(np.unique(labels[labels > 0]).size)
    mask = torch.from_numpy(chosen.astype(np.float32))
    return LabelMask(mask, labels, count, float(chosen.mean()) if chosen.size else 0.0)
