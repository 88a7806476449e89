"""What the segmentation nodes share: the model folder, the SEG_UNET type, checks, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..unet_core.checkpoints.writer import next_free_path
from ..unet_core.errors import HostError, InputError
from ..unet_core.segmentation.checkpoint import save_segmentation
from ..unet_core.segmentation.model import SegUNet
from .host import get_host
from .host.paths import check_prefix, save_target

FOLDER = "unet_segmentation"
SEG_TYPE = "SEG_UNET"
CATEGORY = "UNet Lab/segmentation"


def check_seg_unet(seg: Any, node: str) -> SegUNet:
    """``seg`` when it is a SEG_UNET; InputError naming ``node`` otherwise."""
    if not isinstance(seg, SegUNet):
        raise InputError(f"{node}: input 'seg_unet' is {type(seg).__name__}, not a SEG_UNET from "
                         "Load Segmentation U-Net or Train Segmentation U-Net")
    return seg


def save_seg_unet(seg: SegUNet, prefix: str) -> Path:
    """Save as ``<prefix>_NNNNN_.safetensors`` in the segmentation folder (ComfyUI's numbering; never overwrites)."""
    stem = save_target(get_host().save_directory(FOLDER), prefix, "Save Segmentation U-Net")
    return save_segmentation(next_free_path(stem.with_name(stem.name + ".safetensors")), seg.model, seg.meta,
                             overwrite=False)


def check_save_prefix(prefix: str, node: str) -> None:
    """InputError when a non-empty ``prefix`` cannot name a file in the segmentation folder (nothing created)."""
    if prefix and prefix.strip():
        check_prefix(get_host().save_directory(FOLDER), prefix, node)


def pairs_folder(folder: str, node: str) -> Path:
    """The folder of image/mask pairs ``folder`` inside the input folder; InputError when outside or absent."""
    root = get_host().input_directory().resolve()
    target = (root / folder).resolve()
    if Path(folder).is_absolute() or (root not in target.parents and target != root):
        raise InputError(f"{node}: folder {folder!r} must be inside the input folder {root}")
    if not target.is_dir():
        raise InputError(f"{node}: there is no folder {folder!r} in the input folder {root}")
    return target


def validation_message(check: Any, *args: Any) -> bool | str:
    """``VALIDATE_INPUTS``' answer for a check that raises: True, or the error's message."""
    try:
        check(*args)
    except (InputError, HostError) as error:
        return str(error)
    return True
