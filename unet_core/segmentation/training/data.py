"""Segmentation datasets: IMAGE/MASK batches, or a folder of image/mask pairs.

A folder of pairs is matched by file stem, in this order of preference:

- ``<folder>/masks/<stem>.<ext>`` for ``<folder>/<stem>.<ext>`` or ``<folder>/images/<stem>.<ext>``;
- ``<folder>/<stem>_mask.<ext>`` beside ``<folder>/<stem>.<ext>``.

Files are read at their own bit depth (:mod:`...imaging`: 8/16-bit and float PNG/TIFF).
Images are normalised per file as Load Image (scientific) does by default: the 1st..99.8th
percentiles of each channel map to 0..1, so an 8-bit image and its 16-bit copy train alike
and nothing is clipped to white. Masks: ``mask_mode="binary"`` makes every pixel whose label is
above 0 foreground (0/255 and 0/1 masks, and instance label images with any ids, all work);
``"labels"`` keeps the pixel values as class indices. Every image must have a mask of the same
size; anything else is an error naming the files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError, SegmentationError
from ...imaging import labels_to_mask, normalise
from ...imaging import read_image as read_stack
from ...imaging.labels import label_array

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_MODES = ("binary", "labels")
log = logging.getLogger(__name__)


@dataclass
class SegmentationDataset:
    """Image [H, W, 3] float 0..1 and mask [H, W] float (0/1, or class labels) pairs; sizes may differ."""

    images: list[torch.Tensor]
    masks: list[torch.Tensor]
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: list[int]) -> SegmentationDataset:
        return SegmentationDataset([self.images[i] for i in indices], [self.masks[i] for i in indices],
                                   [self.names[i] for i in indices])


def _as_mask_batch(masks: torch.Tensor, input_name: str) -> torch.Tensor:
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    elif masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    elif masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise InputError(f"input '{input_name}': expected a MASK [B, H, W], got shape {tuple(masks.shape)}")
    return masks


def dataset_from_batches(images: torch.Tensor, masks: torch.Tensor, image_name: str = "images",
                         mask_name: str = "masks") -> SegmentationDataset:
    """A dataset from an IMAGE batch [B, H, W, C] and a MASK batch [B, H, W] of the same sizes."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"input '{image_name}': expected an IMAGE [B, H, W, C], got {shape}")
    masks = _as_mask_batch(masks, mask_name)
    if images.shape[0] == 0:
        raise InputError(f"input '{image_name}': the image batch is empty")
    if images.shape[0] != masks.shape[0]:
        raise InputError(f"inputs '{image_name}' and '{mask_name}': {images.shape[0]} image(s) but "
                         f"{masks.shape[0]} mask(s); give one mask per image")
    if tuple(images.shape[1:3]) != tuple(masks.shape[1:3]):
        raise InputError(f"inputs '{image_name}' and '{mask_name}': images are {images.shape[2]} x {images.shape[1]} "
                         f"px but masks are {masks.shape[2]} x {masks.shape[1]} px; they must match")
    if images.shape[-1] == 4:
        images = images[..., :3]
    elif images.shape[-1] == 1:
        images = images.expand(*images.shape[:-1], 3)
    elif images.shape[-1] != 3:
        raise InputError(f"input '{image_name}': {images.shape[-1]} channels; expected 1, 3 or 4")
    if not bool(torch.isfinite(images).all()) or not bool(torch.isfinite(masks).all()):
        raise InputError(f"inputs '{image_name}'/'{mask_name}': NaN or infinite values")
    images = images.float()
    if float(images.max()) > 1.5:
        scale = 255.0 if float(images.max()) <= 255 else 65535.0
        log.warning("input '%s': values up to %g look like raw pixels; scaled by 1/%g", image_name,
                    float(images.max()), scale)
        images = images / scale
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        log.warning("input '%s': values %g..%g lie outside 0..1 and are clipped to it", image_name, low, high)
    images = images.clamp(0, 1)
    count = images.shape[0]
    return SegmentationDataset([images[i].contiguous() for i in range(count)],
                               [masks[i].float().contiguous() for i in range(count)],
                               [f"{image_name}[{i}]" for i in range(count)])


def read_image(path: Path, normalization: str = "percentile") -> torch.Tensor:
    """An image file as [H, W, 3] float 0..1 (first page; see the module docstring); errors name the file."""
    result = normalise(read_stack(path), normalization)
    return result.image[0]


def read_mask(path: Path, mode: str = "binary") -> torch.Tensor:
    """A mask file as [H, W] float: 0/1 (binary: label > 0) or class indices (labels)."""
    if mode not in MASK_MODES:
        raise InputError(f"mask mode {mode!r}: expected one of {list(MASK_MODES)}")
    stack = read_stack(path)
    if mode == "labels":
        return torch.from_numpy(label_array(stack)[0].astype(np.float32))
    return labels_to_mask(stack).mask[0]


def find_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths in ``folder`` matched by stem; SegmentationError when any image lacks a mask."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SegmentationError(f"{folder}: no such folder of image/mask pairs")
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    mask_dir = folder / "masks"
    images = sorted(p for p in image_dir.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.stem.endswith("_mask"))
    if not images:
        raise SegmentationError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    masks_by_stem: dict[str, Path] = {}
    if mask_dir.is_dir():
        for p in mask_dir.iterdir():
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                stem = p.stem[:-5] if p.stem.endswith("_mask") else p.stem
                masks_by_stem.setdefault(stem, p)
    for p in image_dir.iterdir():
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.stem.endswith("_mask"):
            masks_by_stem.setdefault(p.stem[:-5], p)
    missing = [p.name for p in images if p.stem not in masks_by_stem]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SegmentationError(f"{folder}: no mask for {shown} (expected masks/<name>.png or <name>_mask.png)")
    return [(p, masks_by_stem[p.stem]) for p in images]


def load_pair_folder(folder: str | Path, mask_mode: str = "binary") -> SegmentationDataset:
    """Every image/mask pair of a folder; sizes must match pair by pair."""
    images, masks, names = [], [], []
    for image_path, mask_path in find_pairs(Path(folder)):
        image = read_image(image_path)
        mask = read_mask(mask_path, mask_mode)
        if tuple(image.shape[:2]) != tuple(mask.shape):
            raise SegmentationError(f"{image_path.name} is {image.shape[1]} x {image.shape[0]} px but its mask "
                                    f"{mask_path.name} is {mask.shape[1]} x {mask.shape[0]} px; they must match")
        images.append(image)
        masks.append(mask)
        names.append(image_path.name)
    return SegmentationDataset(images, masks, names)
