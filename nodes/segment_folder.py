"""Segment Folder: every image of a folder segmented into mask files; resumable, sharded under torchrun.

A thin adapter over ``unet_core.segmentation.inference.folder``: it resolves the folders
(input inside the input folder, output inside the output folder), hands the settings over,
writes the summary CSV on rank 0 and shapes the report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..unet_core import distributed
from ..unet_core.errors import InputError
from ..unet_core.segmentation.inference.device_io import SEGMENT_SPEEDS
from ..unet_core.segmentation.inference.folder import FolderSettings, segment_folder
from ..unet_core.segmentation.inference.folder_files import SUMMARY_NAME, write_atomic
from ..unet_core.segmentation.inference.segment import SegmentOptions
from ..unet_core.segmentation.inference.tiling import BLENDS
from .host import get_host
from .progress import progress_callback
from .segmentation import SPEED_TOOLTIP
from .segmentation_common import CATEGORY, SEG_TYPE, check_seg_unet

log = logging.getLogger(__name__)

NODE = "Segment Folder"


def _inside(root: Path, name: str, what: str) -> Path:
    """``name`` resolved inside ``root``; InputError when it is absolute or leaves ``root``."""
    root = root.resolve()
    target = (root / name).resolve()
    if Path(name).is_absolute() or (target != root and root not in target.parents):
        raise InputError(f"{NODE}: {what} {name!r} must be a folder inside {root}")
    return target


class UNetLabSegmentFolder:
    DESCRIPTION = ("Segments every image of a folder (inside the input folder) with a segmentation U-Net and "
                   "writes one mask per image (<name>.png, 0/255), optionally probabilities (16-bit PNG) and "
                   "overlays, into a folder inside the output folder, with a summary table (count, time, "
                   "foreground share per image) and segment_folder_summary.csv. Resumable: images whose files "
                   "exist are skipped, and files are written whole or not at all. Under torchrun the images are "
                   "shared between the processes.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_TOOLTIPS = ("The summary: images segmented, skipped and failed, time, and per image its size, seconds "
                       "and foreground share.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "seg_unet": (SEG_TYPE, {"tooltip": "The segmentation model (Load or Train Segmentation U-Net)."}),
                "input_folder": ("STRING", {"default": "slides", "tooltip": "Folder of images inside the input "
                                            "folder (PNG, JPEG, TIFF, BMP, WebP; not its sub-folders)."}),
                "output_folder": ("STRING", {"default": "unet_lab/masks", "tooltip": "Folder inside the output "
                                             "folder for the masks (created when missing)."}),
                "tile_size": ("INT", {"default": 512, "min": 32, "max": 8192, "step": 32,
                                      "tooltip": "Images larger than this run in tiles of this size."}),
                "overlap": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 0.9, "step": 0.05,
                                      "tooltip": "Fraction of a tile shared with its neighbour."}),
                "flip_tta": ("BOOLEAN", {"default": False, "tooltip": "Average the model over the 4 flips (4x "
                                         "slower, smoother masks)."}),
                "threshold": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "Probability at which a pixel counts as foreground; -1 = the "
                                                   "checkpoint's threshold."}),
                "class_mode": ("STRING", {"default": "foreground", "tooltip": "'foreground' (everything but "
                                          "background) or 'class:<name or index>': one mask per image."}),
                "write_probabilities": ("BOOLEAN", {"default": False, "tooltip": "Also write "
                                        "<name>_probability.png (16-bit, probability x 65535)."}),
                "write_overlays": ("BOOLEAN", {"default": False, "tooltip": "Also write <name>_overlay.png (the "
                                   "image with the mask tinted)."}),
                "redo_existing": ("BOOLEAN", {"default": False, "tooltip": "Segment images whose files exist "
                                  "again and replace those files; off: skip them (resume an interrupted run)."}),
            },
            "optional": {
                "blend": (list(BLENDS), {"default": "gaussian", "tooltip": "How overlapping tiles are blended."}),
                "speed": (list(SEGMENT_SPEEDS), {"default": "auto", "tooltip": SPEED_TOOLTIP}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def run(self, seg_unet: Any, input_folder: str, output_folder: str, tile_size: int = 512,
            overlap: float = 0.25, flip_tta: bool = False, threshold: float = -1.0,
            class_mode: str = "foreground", write_probabilities: bool = False, write_overlays: bool = False,
            redo_existing: bool = False, blend: str = "gaussian", speed: str = "auto",
            unique_id: Any = None) -> dict[str, Any]:
        seg = check_seg_unet(seg_unet, NODE)
        host = get_host()
        source = _inside(host.input_directory(), input_folder.strip(), "input_folder")
        target = _inside(host.shared_output_directory(), output_folder.strip(), "output_folder")
        options = SegmentOptions(tile_size=int(tile_size), overlap=float(overlap), blend=blend,
                                 tta_flips=bool(flip_tta), threshold=None if threshold < 0 else float(threshold),
                                 class_mode=class_mode, speed=speed, release_memory=host.release_memory)
        settings = FolderSettings(options, probabilities=bool(write_probabilities), overlays=bool(write_overlays),
                                  redo=bool(redo_existing))
        device = host.device()
        model = seg.model
        original = next((p.device for p in model.parameters()), torch.device("cpu"))
        model.to(device)
        try:
            result = segment_folder(model, seg.meta, source, target, settings, device=device,
                                    progress=progress_callback(1, unique_id))
        finally:
            model.to(original)
            host.release_memory()
        context = distributed.active()
        if context is None or context.is_main:
            write_atomic(target / SUMMARY_NAME, result.csv())
        report = f"{result.table()}\nmasks in {target}"
        log.info("%s: %s", NODE, report)
        return {"ui": {"text": [report]}, "result": (report,)}


NODE_CLASS_MAPPINGS: dict[str, type] = {"UNetLabSegmentFolder": UNetLabSegmentFolder}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {"UNetLabSegmentFolder": "Segment Folder"}
