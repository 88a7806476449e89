"""Volume nodes: segment a z-stack with a 3D model; make synthetic volumes.

A volume is an IMAGE batch read as z-slices ([D, H, W, C], e.g. a multi-page TIFF loaded as a
batch); its mask is a MASK batch [D, H, W]. Several volumes of the same depth travel as one
batch of ``count * depth`` slices, cut by ``volume_depth`` where a node needs them apart.
Thin adapters over ``unet_core.segmentation.inference.volume`` and ``training.synthetic_volumes``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..unet_core.errors import InputError
from ..unet_core.segmentation.inference.outputs import compare_masks
from ..unet_core.segmentation.inference.volume import segment_volume
from ..unet_core.segmentation.training.synthetic_volumes import make_synthetic_volumes
from .host import get_host
from .progress import progress_callback
from .segmentation_common import CATEGORY, SEG_TYPE, check_seg_unet

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


class UNetLabSegmentVolume:
    DESCRIPTION = ("Segments a volume (an IMAGE batch read as z-slices, such as a multi-page TIFF) with a 3D "
                   "segmentation model (unet3d, pytorch-3dunet, MONAI 3D): a 3D sliding window with gaussian "
                   "blending over z, y and x, run in z-slabs so memory stays bounded; out of memory halves the "
                   "window batch, then the patch. A single image (one slice) works. Returns the mask and "
                   "probability stacks and an overlay stack; with a ground truth the report gives Dice and IoU.")
    CATEGORY = CATEGORY
    FUNCTION = "segment"
    RETURN_TYPES = ("MASK", "MASK", "IMAGE", "STRING")
    RETURN_NAMES = ("mask", "probability", "overlay", "report")
    OUTPUT_TOOLTIPS = ("Binary mask stack [D, H, W] (0 or 1).",
                       "Foreground probability stack [D, H, W] in 0..1.",
                       "The slices with the mask tinted in colour [D, H, W, 3].",
                       "Windows, patch, warnings, and Dice/IoU when a ground truth is connected.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "seg_unet": (SEG_TYPE, {"tooltip": "A 3D segmentation model (Load Segmentation U-Net: '(new) unet3d', "
                                                   "a pytorch-3dunet or MONAI 3D file, or a trained one)."}),
                "volume": ("IMAGE", {"tooltip": "The z-slices of one volume [D, H, W, C], in order."}),
                "patch_depth": ("INT", {"default": 32, "min": 1, "max": 512, "tooltip": "Window depth in slices "
                                        "(clipped to the volume)."}),
                "patch_size": ("INT", {"default": 128, "min": 16, "max": 1024, "step": 16, "tooltip": "Window "
                                       "height and width in pixels (clipped to the slice); halved on out-of-memory."}),
                "overlap": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 0.9, "step": 0.05, "tooltip": "Fraction "
                                      "of a window shared with its neighbour on each axis (0.5 as nnU-Net)."}),
                "threshold": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01, "tooltip":
                                        "Foreground probability for the mask; -1 = the checkpoint's threshold."}),
                "window_batch": ("INT", {"default": 2, "min": 1, "max": 64, "tooltip": "Windows per model call "
                                         "(halved automatically on out-of-memory)."}),
            },
            "optional": {
                "ground_truth": ("MASK", {"tooltip": "Optional true mask stack [D, H, W]: the report then gives Dice "
                                                     "and IoU."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def segment(self, seg_unet: Any, volume: torch.Tensor, patch_depth: int = 32, patch_size: int = 128,
                overlap: float = 0.25, threshold: float = -1.0, window_batch: int = 2,
                ground_truth: torch.Tensor | None = None, unique_id: Any = None) -> dict[str, Any]:
        seg = check_seg_unet(seg_unet, "Segment Volume")
        host = get_host()
        device = host.device()
        model = seg.model
        original = next((p.device for p in model.parameters()), torch.device("cpu"))
        try:
            result = segment_volume(model, seg.meta, volume, patch=(int(patch_depth), int(patch_size), int(patch_size)),
                                    overlap=float(overlap), threshold=None if threshold < 0 else float(threshold),
                                    device=device, progress=progress_callback(1, unique_id),
                                    window_batch=int(window_batch))
        finally:
            model.to(original)
            host.release_memory()
        d, h, w = result.masks.shape
        lines = [f"volume {d} x {h} x {w} (slices x height x width): {result.windows} window(s) of {result.patch}, "
                 f"{result.window_batch} per model call; foreground {100.0 * float(result.masks.mean()):.2f}%"]
        lines += result.warnings
        if ground_truth is not None:
            dice, iou = compare_masks(result.masks, ground_truth)
            lines.append(f"Dice {dice:.4f}, IoU {iou:.4f} against the ground truth")
        report = "\n".join(lines)
        log.info("Segment Volume: %s", report)
        return {"ui": {"text": [report]}, "result": (result.masks, result.probabilities, result.overlay, report)}


class UNetLabSyntheticVolumeData:
    DESCRIPTION = ("Makes seeded synthetic volumes: textured 3D blobs and tubes on a mottled, noisy background "
                   "whose intensities overlap the foreground's. Several volumes come as one batch of count x depth "
                   "slices (the depth output says how to cut it). For 3D demos and tests with no download.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE", "MASK", "INT")
    RETURN_NAMES = ("volumes", "masks", "depth")
    OUTPUT_TOOLTIPS = ("Slices of all volumes [count x depth, size, size, 3] in 0..1, volume after volume.",
                       "Their true masks [count x depth, size, size] (0/1).",
                       "Slices per volume (connect to the Train node's volume_depth).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "count": ("INT", {"default": 6, "min": 1, "max": 256, "tooltip": "Number of volumes."}),
                "depth": ("INT", {"default": 32, "min": 1, "max": 512, "tooltip": "Slices per volume."}),
                "size": ("INT", {"default": 64, "min": 16, "max": 1024, "step": 8, "tooltip": "Slice width = "
                                 "height, px."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed: the same seed and "
                                 "split give the same volumes."}),
                "split": (list(SPLITS), {"default": "train", "tooltip": "Which split of the seed: train, "
                                         "validation and test never share volumes."}),
            },
        }

    def make(self, count: int = 6, depth: int = 32, size: int = 64, seed: int = 0,
             split: str = "train") -> tuple[torch.Tensor, torch.Tensor, int]:
        if split not in SPLITS:
            raise InputError(f"Synthetic Volume Data: split {split!r} not in {list(SPLITS)}")
        derived = int(seed) * len(SPLITS) + 1_000_003 * SPLITS.index(split)
        pairs = make_synthetic_volumes(int(count), int(depth), int(size), derived)
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]), int(depth)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "UNetLabSegmentVolume": UNetLabSegmentVolume,
    "UNetLabSyntheticVolumeData": UNetLabSyntheticVolumeData,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "UNetLabSegmentVolume": "Segment Volume",
    "UNetLabSyntheticVolumeData": "Synthetic Volume Data",
}
