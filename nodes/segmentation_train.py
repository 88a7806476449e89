"""Segmentation training nodes: train a segmentation U-Net; make synthetic training data.

Thin adapters over ``unet_core.segmentation.training``; registered through
:mod:`.segmentation`'s ``NODE_CLASS_MAPPINGS``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from ..unet_core.errors import InputError
from ..unet_core.segmentation.inference.device_io import SEGMENT_SPEEDS
from ..unet_core.segmentation.model import SegUNet
from ..unet_core.segmentation.training.augment import AugmentConfig
from ..unet_core.segmentation.training.data import dataset_from_batches, load_pair_folder
from ..unet_core.segmentation.training.loop import SCHEDULES, TrainConfig, held_out_dice, train_segmentation
from ..unet_core.segmentation.training.losses import LOSSES
from ..unet_core.segmentation.training.synthetic import make_synthetic
from ..unet_core.segmentation.training.volume_loop import VolumeTrainConfig, split_volumes, train_volumes, volume_dice
from .host import get_host
from .progress import progress_callback
from .segmentation_common import (
    CATEGORY,
    SEG_TYPE,
    check_save_prefix,
    check_seg_unet,
    pairs_folder,
    save_seg_unet,
    validation_message,
)

log = logging.getLogger(__name__)

NODE = "Train Segmentation U-Net"
AUGMENTATIONS = ("flips+rotations+brightness", "flips+rotations+brightness+elastic", "none")
SPLITS = ("train", "validation", "test")


def _finish(trained: SegUNet, report: str, held: tuple[float, str] | None, filename_prefix: str) -> dict[str, Any]:
    """Save the trained model when a prefix is set; the node's UI text and result."""
    lines = [report]
    if held is not None:
        lines.insert(0, f"held-out Dice {held[0]:.4f} on {held[1]}")
    if filename_prefix and filename_prefix.strip():
        path = save_seg_unet(trained, filename_prefix)
        trained.name = path.name
        lines.append(f"saved to {path}")
    text = "\n".join(lines)
    log.info("Train Segmentation U-Net: %s", text)
    return {"ui": {"text": [text]}, "result": (trained, text)}


VOLUME_PATCH_SIDE = 48  # 3D patches' height and width when patch_size is 0


class UNetLabTrainSegmentationUNet:
    DESCRIPTION = ("Trains a segmentation U-Net (a copy: the input model is unchanged) on IMAGE + MASK batches or "
                   "a folder of image/mask pairs (under the input folder; masks/<name>.png or <name>_mask.png). "
                   "AdamW with cosine decay on random patches (a share centred on objects), cross-entropy + soft "
                   "Dice, optional U-Net border weights and elastic deformation; a held-out split (a tile when "
                   "there is one image) reports the Dice. bf16 on CUDA GPUs. Saves to models/unet_segmentation; "
                   "the name and folder are checked before training starts.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = (SEG_TYPE, "STRING")
    RETURN_NAMES = ("seg_unet", "report")
    OUTPUT_TOOLTIPS = ("The trained model (also saved when filename_prefix is set).",
                       "Loss and held-out Dice per epoch, and where the model was saved.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "seg_unet": (SEG_TYPE, {"tooltip": "The model to train from (a '(new)' one or a loaded file); "
                                                   "it is copied, never modified."}),
                "steps": ("INT", {"default": 150, "min": 1, "max": 1000000, "tooltip": "Optimiser steps "
                                  "(each one batch)."}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Images per step."}),
                "learning_rate": ("FLOAT", {"default": 0.003, "min": 1e-6, "max": 1.0, "step": 0.0001,
                                            "tooltip": "AdamW peak learning rate."}),
                "schedule": (list(SCHEDULES), {"default": "cosine", "tooltip": "cosine decay after a 5% warm-up, "
                                               "or a constant rate."}),
                "loss": (list(LOSSES), {"default": "ce+dice", "tooltip": "Cross-entropy (binary with one class) "
                                        "plus soft Dice, either alone."}),
                "augmentation": (list(AUGMENTATIONS), {"default": AUGMENTATIONS[0], "tooltip": "Random flips, "
                                 "90-degree turns, brightness/contrast; optionally elastic deformation (U-Net "
                                 "paper)."}),
                "border_weights": ("BOOLEAN", {"default": False, "tooltip": "Weight the cross-entropy with the "
                                   "U-Net paper's map (w0 = 10, sigma = 5 px): gaps between touching objects count "
                                   "more."}),
                "validation_fraction": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 0.9, "step": 0.05,
                                                  "tooltip": "Share of the images held out to report the Dice "
                                                  "(at least one image when above 0; with one image, a strip of "
                                                  "this share of it). 0: no validation."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the split, "
                                 "batches and augmentation: the same seed gives the same weights on CPU."}),
                "filename_prefix": ("STRING", {"default": "unet_lab/segmentation", "tooltip": "Save as "
                                    "<prefix>_00001_.safetensors (numbered, never overwriting) in "
                                    "models/unet_segmentation; empty = do not save."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Training images [B, H, W, C] (with 'masks')."}),
                "masks": ("MASK", {"tooltip": "Training masks [B, H, W], one per image, same size (0/1; class "
                                   "indices for multi-class models)."}),
                "folder": ("STRING", {"default": "", "tooltip": "Instead of images/masks: a folder of image/mask "
                                      "pairs inside the input folder."}),
                "validation_images": ("IMAGE", {"tooltip": "Optional separate held-out images; replaces the split."}),
                "validation_masks": ("MASK", {"tooltip": "Masks of validation_images."}),
                "patch_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": "Side of the "
                               "random training patches, px. 0: 128 on the CPU, 256 on a GPU (2D), 48 (3D); never "
                               "larger than the smallest image."}),
                "foreground_oversampling": ("FLOAT", {"default": 0.33, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "Share of each batch's patches centred on a foreground "
                                            "pixel (as nnU-Net); the rest are uniform over the image (2D models)."}),
                "speed": (list(SEGMENT_SPEEDS), {"default": "auto", "tooltip": "auto/fast: on a CUDA GPU bf16 "
                          "autocast, channels_last and fused AdamW (float32 weights); float32 on the CPU. exact: "
                          "float32 everywhere. compiled: fast under torch.compile (the first steps compile)."}),
                "volume_depth": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip": "3D models only: slices "
                                 "per volume, to cut the images batch into volumes (Synthetic Volume Data's depth); "
                                 "0 = the whole batch is one volume."}),
                "patch_depth": ("INT", {"default": 16, "min": 1, "max": 512, "tooltip": "3D models only: depth "
                                "of the random training patches, in slices."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str = "", folder: str = "") -> bool | str:
        checked = validation_message(check_save_prefix, filename_prefix, NODE)
        if checked is True and folder and folder.strip():
            checked = validation_message(pairs_folder, folder.strip(), NODE)
        return checked

    def train(self, seg_unet: Any, steps: int = 150, batch_size: int = 8, learning_rate: float = 0.003,
              schedule: str = "cosine", loss: str = "ce+dice", augmentation: str = AUGMENTATIONS[0],
              border_weights: bool = False, validation_fraction: float = 0.2, seed: int = 0,
              filename_prefix: str = "unet_lab/segmentation", images: torch.Tensor | None = None,
              masks: torch.Tensor | None = None, folder: str = "", validation_images: torch.Tensor | None = None,
              validation_masks: torch.Tensor | None = None, patch_size: int = 0,
              foreground_oversampling: float = 0.33, speed: str = "auto", volume_depth: int = 0,
              patch_depth: int = 16, unique_id: Any = None) -> dict[str, Any]:
        seg = check_seg_unet(seg_unet, NODE)
        check_save_prefix(filename_prefix, NODE)  # before any work: a bad name never costs a trained model
        if int(getattr(seg.model, "spatial_dims", 2)) == 3:
            side = int(patch_size) or VOLUME_PATCH_SIDE
            return self._train_volumes(seg, images, masks, validation_images, validation_masks, int(volume_depth),
                                       (int(patch_depth), side, side), int(steps),
                                       int(batch_size), float(learning_rate), loss, augmentation,
                                       float(validation_fraction), int(seed), filename_prefix, unique_id)
        if images is not None or masks is not None:
            if images is None or masks is None:
                raise InputError("Train Segmentation U-Net: connect both 'images' and 'masks'")
            data = dataset_from_batches(images, masks, "images", "masks")
        elif folder and folder.strip():
            data = load_pair_folder(pairs_folder(folder.strip(), NODE))
        else:
            raise InputError("Train Segmentation U-Net: connect 'images' + 'masks', or name a 'folder' of pairs")
        held_out = None
        if validation_images is not None or validation_masks is not None:
            if validation_images is None or validation_masks is None:
                raise InputError("Train Segmentation U-Net: connect both 'validation_images' and 'validation_masks'")
            held_out = dataset_from_batches(validation_images, validation_masks, "validation_images",
                                            "validation_masks")
        augment = None if augmentation == "none" else AugmentConfig(elastic="elastic" in augmentation)
        config = TrainConfig(steps=int(steps), batch_size=int(batch_size), lr=float(learning_rate), schedule=schedule,
                             loss=loss, border_weights=bool(border_weights), augment=augment,
                             val_fraction=0.0 if held_out is not None else float(validation_fraction), seed=int(seed),
                             normalization=dict(getattr(seg.meta, "normalization", {}) or {}),
                             patch_size=int(patch_size), foreground_fraction=float(foreground_oversampling),
                             speed=speed)
        model = copy.deepcopy(seg.model).to(torch.device("cpu"))
        meta = copy.deepcopy(seg.meta)
        host = get_host()
        device = host.device()
        try:
            result = train_segmentation(model, data, config, progress=progress_callback(int(steps), unique_id), device=device)
            held_dice = None if held_out is None else held_out_dice(model, held_out, config, device)
        finally:
            model.to(torch.device("cpu"))
            host.release_memory()
        held = None if held_dice is None else (held_dice, f"{len(held_out)} separate validation image(s)")
        return _finish(SegUNet(model, meta, f"{seg.name} (trained)"), result.report(), held, filename_prefix)


    def _train_volumes(self, seg: SegUNet, images: torch.Tensor | None, masks: torch.Tensor | None,
                       val_images: torch.Tensor | None, val_masks: torch.Tensor | None, depth: int,
                       patch: tuple[int, int, int], steps: int, batch_size: int, lr: float, loss: str,
                       augmentation: str, val_fraction: float, seed: int, filename_prefix: str,
                       unique_id: Any) -> dict[str, Any]:
        """The 3D path: volumes cut from the batches, random 3D patches, 3D augmentation."""
        if images is None or masks is None:
            raise InputError("Train Segmentation U-Net: a 3D model trains on volumes: connect 'images' and 'masks' "
                             "(z-slices, e.g. from Synthetic Volume Data)")
        volumes = split_volumes(images, masks, depth, "images")
        held_out = None if val_images is None or val_masks is None else split_volumes(val_images, val_masks, depth,
                                                                                       "validation_images")
        augment = None if augmentation == "none" else AugmentConfig(elastic="elastic" in augmentation)
        config = VolumeTrainConfig(steps=steps, batch_size=batch_size, patch=patch, lr=lr, loss=loss,
                                   augment=augment, val_fraction=0.0 if held_out else val_fraction, seed=seed,
                                   normalization=dict(getattr(seg.meta, "normalization", {}) or {}))
        model = copy.deepcopy(seg.model).to(torch.device("cpu"))
        host = get_host()
        device = host.device()
        try:
            result = train_volumes(model, volumes, config, progress=progress_callback(steps, unique_id), device=device)
            held_dice = None if not held_out else volume_dice(model, held_out, config, device)
        finally:
            model.to(torch.device("cpu"))
            host.release_memory()
        held = None if held_dice is None else (held_dice, f"{len(held_out or [])} separate validation volume(s)")
        return _finish(SegUNet(model, copy.deepcopy(seg.meta), f"{seg.name} (trained)"), result.report(), held,
                       filename_prefix)


class UNetLabSyntheticSegmentationData:
    DESCRIPTION = ("Makes seeded synthetic segmentation data: striped shapes (ellipses, polygons, blobs) on "
                   "mottled, noisy backgrounds whose intensities overlap, so only texture tells them apart. "
                   "Different splits of one seed never share images. For demos and tests with no input files.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "masks")
    OUTPUT_TOOLTIPS = ("Images [count, size, size, 3] in 0..1.", "Their true masks [count, size, size] (0/1).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "count": ("INT", {"default": 64, "min": 1, "max": 4096, "tooltip": "Number of image/mask pairs."}),
                "size": ("INT", {"default": 64, "min": 16, "max": 2048, "step": 8, "tooltip": "Width = height, px."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed: the same seed and "
                                 "split give the same data."}),
                "split": (list(SPLITS), {"default": "train", "tooltip": "Which split of the seed: train, "
                                         "validation and test never share images."}),
            },
        }

    def make(self, count: int = 64, size: int = 64, seed: int = 0, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        if split not in SPLITS:
            raise InputError(f"Synthetic Segmentation Data: split {split!r} not in {list(SPLITS)}")
        derived = int(seed) * len(SPLITS) + SPLITS.index(split) + 1_000_003 * SPLITS.index(split)
        images, masks = make_synthetic(int(count), int(size), derived)
        return images, masks
