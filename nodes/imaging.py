"""Scientific image nodes: Load Image (scientific) and Load Mask / Labels.

Thin adapters over ``unet_core.imaging``: a file name from the host's input folder is resolved
(refusing names that leave it), read at its own bit depth, and shaped into IMAGE
[pages, H, W, 3] or MASK [pages, H, W] float32 0..1, with a one-line report that states the
original bit depth and what was done. Both run in ComfyUI and standalone.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from ..unet_core.errors import HostError
from ..unet_core.imaging import CHANNELS, NORMALISATIONS, labels_to_mask, normalise, read_image
from .host import get_host
from .host.paths import resolve_inside

log = logging.getLogger(__name__)

CATEGORY = "UNet Lab/imaging"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
FOREGROUND = ("label > 0", "one class id")
FILE_TOOLTIP = ("An image file in the input folder (upload one with the button). PNG or TIFF, 8 or 16 bits or "
                "float; a multi-page TIFF loads every page as one batch item (a z-stack or time series).")


def input_files() -> list[str]:
    """Image files in the host's input folder (top level, as ComfyUI's LoadImage lists them)."""
    try:
        folder = Path(get_host().input_directory())
    except HostError:
        return []
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)),
                  key=str.lower)


def input_path(name: str) -> Path:
    """The file ``name`` in the input folder; HostError when absent or outside it."""
    return resolve_inside([Path(get_host().input_directory())], name, "input")


def validate_input_file(name: str) -> bool | str:
    """``VALIDATE_INPUTS`` for a file name: True, or a message naming the file and the problem."""
    try:
        input_path(name)
    except HostError as error:
        return str(error)
    return True


def file_digest(name: str) -> str:
    """``IS_CHANGED``: the file's SHA-256, so an edited file with the same name reloads."""
    digest = hashlib.sha256()
    with open(input_path(name), "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class UNetLabLoadImageScientific:
    DESCRIPTION = ("Loads a microscopy or other scientific image at its own bit depth: 8/16-bit and float PNG or "
                   "TIFF, every page of a multi-page TIFF as a batch. Picks a channel and maps the intensities to "
                   "0..1 by percentiles (as microscopy tools do), the range found, or the type's full scale. "
                   "Never clips a 16-bit image to white as ComfyUI's Load Image does.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "report")
    OUTPUT_TOOLTIPS = ("The image [pages, H, W, 3] float 0..1 (one channel repeated to three, or RGB).",
                       "What was read: pages, size, channels, original bit depth and value range, and the "
                       "intensity mapping applied.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": (input_files(), {"image_upload": True, "tooltip": FILE_TOOLTIP}),
                "channel": (list(CHANNELS), {"default": "all", "tooltip": "all: the colour channels as they are "
                            "(grayscale shown as gray). 0-3: one channel (e.g. the nuclei stain), as gray."}),
                "normalization": (list(NORMALISATIONS), {"default": "percentile", "tooltip": "percentile: map the "
                                  "low..high percentiles to 0..1 and saturate beyond (robust to hot pixels). "
                                  "min-max: map the darkest..brightest value to 0..1, nothing clipped. none: "
                                  "divide by the type's full scale (255, 65535; float kept as is)."}),
                "low_percentile": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                             "tooltip": "percentile normalisation: this percentile maps to 0."}),
                "high_percentile": ("FLOAT", {"default": 99.8, "min": 0.0, "max": 100.0, "step": 0.1,
                                              "tooltip": "percentile normalisation: this percentile maps to 1."}),
            },
        }

    def load(self, image: str, channel: str = "all", normalization: str = "percentile", low_percentile: float = 1.0,
             high_percentile: float = 99.8) -> tuple[torch.Tensor, str]:
        stack = read_image(input_path(image))
        result = normalise(stack, normalization, channel, float(low_percentile), float(high_percentile))
        report = f"{stack.describe()}; {result.describe()}"
        log.info("Load Image (scientific): %s", report)
        return result.image, report

    @classmethod
    def IS_CHANGED(cls, image: str, **_: Any) -> str:
        return file_digest(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image: str, low_percentile: float = 1.0, high_percentile: float = 99.8) -> bool | str:
        if low_percentile >= high_percentile:
            return (f"Load Image (scientific): low_percentile {low_percentile} must be below "
                    f"high_percentile {high_percentile}")
        return validate_input_file(image)


class UNetLabLoadMaskLabels:
    DESCRIPTION = ("Loads a mask or label image (8/16-bit PNG or TIFF, one integer per object or class, 0 = "
                   "background) as a MASK: foreground where the label is above 0, or where it equals one class "
                   "id. Every page of a multi-page TIFF becomes one mask of the batch. Use it for the masks of "
                   "training pairs (ComfyUI's Load Image would give 1 - alpha instead).")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MASK", "STRING")
    RETURN_NAMES = ("mask", "report")
    OUTPUT_TOOLTIPS = ("The mask [pages, H, W] float 0/1.",
                       "What was read: size, original bit depth, the number of distinct labels and the foreground "
                       "fraction.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "mask": (input_files(), {"image_upload": True, "tooltip": "A mask or label image in the input "
                         "folder: 0 = background, any other value = an object or class id (8/16-bit PNG/TIFF)."}),
                "foreground": (list(FOREGROUND), {"default": "label > 0", "tooltip": "label > 0: every object or "
                               "class is foreground. one class id: only pixels whose label equals class_id."}),
                "class_id": ("INT", {"default": 1, "min": 1, "max": 2**31 - 1, "tooltip": "The label value taken "
                             "as foreground when foreground is 'one class id'."}),
            },
        }

    def load(self, mask: str, foreground: str = "label > 0", class_id: int = 1) -> tuple[torch.Tensor, str]:
        stack = read_image(input_path(mask))
        result = labels_to_mask(stack, int(class_id) if foreground == "one class id" else None)
        report = f"{stack.describe()}; {result.describe()}"
        log.info("Load Mask / Labels: %s", report)
        return result.mask, report

    @classmethod
    def IS_CHANGED(cls, mask: str, **_: Any) -> str:
        return file_digest(mask)

    @classmethod
    def VALIDATE_INPUTS(cls, mask: str) -> bool | str:
        return validate_input_file(mask)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "UNetLabLoadImageScientific": UNetLabLoadImageScientific,
    "UNetLabLoadMaskLabels": UNetLabLoadMaskLabels,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "UNetLabLoadImageScientific": "Load Image (scientific)",
    "UNetLabLoadMaskLabels": "Load Mask / Labels",
}
