"""Segmentation nodes: load, segment, train, save segmentation U-Nets; synthetic training data.

Thin adapters: inputs are checked and handed to ``unet_core.segmentation``; outputs are shaped
into ComfyUI types (MASK [B, H, W] float 0..1 at the input's size, IMAGE [B, H, W, 3]). The
model travels as ``SEG_UNET`` (a ``SegUNet``: model + checkpoint meta + name).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from ..unet_core.checkpoints.writer import next_free_path
from ..unet_core.errors import HostError, InputError
from ..unet_core.segmentation.augment import AugmentConfig
from ..unet_core.segmentation.checkpoint import SegmentationMeta, load_segmentation, save_segmentation
from ..unet_core.segmentation.data import dataset_from_batches, load_pair_folder
from ..unet_core.segmentation.device_io import SEGMENT_SPEEDS
from ..unet_core.segmentation.inference import SegUNet, compare_masks, overlay, segment
from ..unet_core.segmentation.losses import LOSSES
from ..unet_core.segmentation.registry import ARCHITECTURES, build_model
from ..unet_core.segmentation.synthetic import make_synthetic
from ..unet_core.segmentation.tiling import BLENDS
from ..unet_core.segmentation.train import SCHEDULES, TrainConfig, held_out_dice, train_segmentation
from .host import get_host
from .host.paths import save_target
from .host.standalone_nodes import PreviewImage

log = logging.getLogger(__name__)

FOLDER = "unet_segmentation"
NEW_PREFIX = "(new) "
AUGMENTATIONS = ("flips+rotations+brightness", "flips+rotations+brightness+elastic", "none")
SPLITS = ("train", "validation", "test")
SEG_TYPE = "SEG_UNET"
CATEGORY = "UNet Lab/segmentation"
SPEED_TOOLTIP = ("How the model runs. auto: fast on a CUDA GPU, exact elsewhere. exact: the weights as stored, "
                 "float32: the reference result. fast: BatchNorm folded into the convolutions and U-Net "
                 "decoder steps without their concatenation (the same math); on a CUDA GPU also bfloat16 (fp16 "
                 "without bf16), channels_last and fused cuDNN kernels (about 1.5x to 2x faster on an H100), "
                 "probabilities typically within 0.003 of exact and at worst a few hundredths, so masks can "
                 "differ only where the probability is that close to the threshold; on the CPU only the "
                 "rewrites (float32, same result to ~1e-5). compiled: the folded model under torch.compile: "
                 "the first run compiles (up to minutes), later runs reuse it; falls back to fast when "
                 "compiling fails.")


def _model_choices() -> list[str]:
    try:
        files = get_host().list_files(FOLDER)
    except (HostError, OSError):
        files = []
    return [NEW_PREFIX + a for a in ARCHITECTURES] + list(files)


def _progress(total: int, unique_id: Any) -> Any:
    host = get_host()
    report = host.progress(total, None if unique_id is None else str(unique_id))

    def callback(done: int, total_now: int, message: str = "") -> None:
        host.check_interrupted()
        report(done, total_now, message)

    return callback


def _check_seg(seg: Any, node: str) -> SegUNet:
    if not isinstance(seg, SegUNet):
        raise InputError(f"{node}: input 'seg_unet' is {type(seg).__name__}, not a SEG_UNET from "
                         "Load Segmentation U-Net or Train Segmentation U-Net")
    return seg


def _save(seg: SegUNet, prefix: str) -> Path:
    """Save as ``<prefix>_NNNNN_.safetensors`` in the segmentation folder (ComfyUI's numbering; never overwrites)."""
    stem = save_target(get_host().save_directory(FOLDER), prefix, "Save Segmentation U-Net")
    return save_segmentation(next_free_path(stem.with_name(stem.name + ".safetensors")), seg.model, seg.meta,
                             overwrite=False)


class UNetLabLoadSegmentationUNet:
    DESCRIPTION = ("Loads a segmentation U-Net from the unet_segmentation model folder (our safetensors format, "
                   "a milesial Pytorch-UNet .pth, an smp state dict or save_pretrained folder), or builds a fresh, "
                   "untrained one ('(new) <architecture>') with the depth, width and classes below, for training.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (SEG_TYPE, "STRING")
    RETURN_NAMES = ("seg_unet", "info")
    OUTPUT_TOOLTIPS = ("The segmentation model with its normalisation, class names and threshold.",
                       "Architecture, size and classes of the model.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model_name": (_model_choices(), {"tooltip": "A file in models/unet_segmentation, or '(new) "
                                                             "<architecture>' for a freshly initialised model."}),
                "depth": ("INT", {"default": 3, "min": 1, "max": 6, "tooltip": "New models only: number of "
                                  "downsamplings (image sizes are padded to multiples of 2^depth)."}),
                "base_channels": ("INT", {"default": 16, "min": 4, "max": 128, "step": 4,
                                          "tooltip": "New models only: channels of the first level (doubling "
                                                     "per level). 16 trains in seconds on a CPU; 64 is the paper."}),
                "classes": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "New models only: 1 = binary "
                                    "(sigmoid, foreground/background); more = classes with softmax (0 = background)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": False,
                                 "tooltip": "New models only: seed of the initial weights."}),
            },
        }

    def load(self, model_name: str, depth: int = 3, base_channels: int = 16, classes: int = 1,
             seed: int = 0) -> tuple[SegUNet, str]:
        if model_name.startswith(NEW_PREFIX):
            architecture = model_name[len(NEW_PREFIX):]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model = build_model(architecture, in_channels=3, out_channels=int(classes), depth=int(depth),
                                    base_channels=int(base_channels))
            seg = SegUNet(model, SegmentationMeta.for_model(model), f"new {architecture}")
        else:
            path = get_host().resolve(FOLDER, model_name)
            model, meta = load_segmentation(path, device="cpu")
            seg = SegUNet(model, meta, model_name)
        info = seg.describe()
        log.info("%s", info)
        return seg, info


class UNetLabSegmentImage:
    DESCRIPTION = ("Segments an IMAGE batch with a segmentation U-Net: thresholded masks, probabilities and a "
                   "coloured overlay, at the input's size. Large images run in overlapping tiles blended with a "
                   "gaussian window (nnU-Net style); flip test-time augmentation averages 4 mirrored passes. "
                   "With a ground-truth MASK the report gives Dice and IoU.")
    CATEGORY = CATEGORY
    FUNCTION = "segment"
    RETURN_TYPES = ("MASK", "MASK", "IMAGE", "STRING")
    RETURN_NAMES = ("mask", "probability", "overlay", "report")
    OUTPUT_TOOLTIPS = ("Binary masks [B, H, W] (0 or 1); B x classes planes for class_mode 'all'.",
                       "Class probabilities [B, H, W] in 0..1 (same planes as mask).",
                       "The input with the masks tinted in colour.",
                       "Tiles, warnings about the input, and Dice/IoU when a ground truth is connected.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "seg_unet": (SEG_TYPE, {"tooltip": "The segmentation model (Load or Train Segmentation U-Net)."}),
                "image": ("IMAGE", {"tooltip": "Images to segment; RGBA loses alpha, grayscale is replicated, "
                                               "0..255 / 0..65535 values are rescaled."}),
                "tile_size": ("INT", {"default": 512, "min": 32, "max": 8192, "step": 32,
                                      "tooltip": "Images larger than this run in tiles of this size (rounded to "
                                                 "the model's size divisor); halved automatically on out-of-memory."}),
                "overlap": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 0.9, "step": 0.05,
                                      "tooltip": "Fraction of a tile shared with its neighbour (0.25 as MONAI, "
                                                 "0.5 as nnU-Net)."}),
                "flip_tta": ("BOOLEAN", {"default": False, "tooltip": "Average the model over the 4 horizontal/"
                                         "vertical flips (4x slower, smoother masks)."}),
                "threshold": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "Probability at which a pixel counts as foreground; -1 = the "
                                                   "checkpoint's threshold (binary) / argmax (classes)."}),
                "class_mode": ("STRING", {"default": "foreground", "tooltip": "'foreground' (everything but "
                                          "background), 'class:<name or index>' (one class), or 'all' (one mask "
                                          "per class, B x classes planes)."}),
                "blend": (list(BLENDS), {"default": "gaussian", "tooltip": "How overlapping tiles are blended: "
                                         "gaussian window (sigma = tile/8) or plain average."}),
            },
            "optional": {
                "ground_truth": ("MASK", {"tooltip": "Optional true masks [B, H, W]: the report then gives Dice "
                                                     "and IoU of the predicted masks."}),
                "speed": (list(SEGMENT_SPEEDS), {"default": "auto", "tooltip": SPEED_TOOLTIP}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def segment(self, seg_unet: Any, image: torch.Tensor, tile_size: int = 512, overlap: float = 0.25,
                flip_tta: bool = False, threshold: float = -1.0, class_mode: str = "foreground",
                blend: str = "gaussian", ground_truth: torch.Tensor | None = None, speed: str = "auto",
                unique_id: Any = None) -> dict[str, Any]:
        seg = _check_seg(seg_unet, "Segment Image")
        host = get_host()
        device = host.device()
        if isinstance(image, torch.Tensor) and image.ndim == 4:
            overlay_bytes = image.shape[0] * image.shape[1] * image.shape[2] * 3 * 4
        else:
            overlay_bytes = 0
        model = seg.model
        original = next((p.device for p in model.parameters()), torch.device("cpu"))
        model.to(device)
        try:
            result = segment(model, seg.meta, image, tile_size=int(tile_size), overlap=float(overlap), blend=blend,
                             tta_flips=bool(flip_tta), threshold=None if threshold < 0 else float(threshold),
                             class_mode=class_mode, device=device, progress=_progress(1, unique_id),
                             free_memory=host.free_memory(torch.device("cpu")), extra_output_bytes=overlay_bytes,
                             release_memory=host.release_memory, speed=speed)
        finally:
            model.to(original)
            host.release_memory()
        tinted = overlay(image, result.masks, result.plane_names)
        lines = [f"{image.shape[0]} image(s) {image.shape[2]} x {image.shape[1]} px, {result.tiles} tile pass(es) of "
                 f"up to {result.tile_size} px ({result.tile_batch} per model call, speed {result.speed}), "
                 f"{result.masks.shape[0]} mask plane(s): {sorted(set(result.plane_names))}"]
        lines += result.warnings
        if ground_truth is not None:
            dice, iou = compare_masks(result.masks, ground_truth)
            lines.append(f"Dice {dice:.4f}, IoU {iou:.4f} against the ground truth")
        report = "\n".join(lines)
        log.info("Segment Image: %s", report)
        # The first overlay as a temp preview, and the first mask's cover, for the web extension.
        preview = PreviewImage().save_images(tinted[:1], filename_prefix="unet_lab_overlay")["ui"]["images"]
        cover = f"{result.plane_names[0]} {100.0 * float(result.masks[0].mean()):.1f}%"
        ui = {"text": [report], "unet_lab_overlay": preview, "unet_lab_mask_info": [cover]}
        return {"ui": ui, "result": (result.masks, result.probabilities, tinted, report)}


class UNetLabTrainSegmentationUNet:
    DESCRIPTION = ("Trains a segmentation U-Net (a copy: the input model is unchanged) on IMAGE + MASK batches or "
                   "a folder of image/mask pairs (under the input folder; masks/<name>.png or <name>_mask.png). "
                   "AdamW with cosine decay, cross-entropy + soft Dice, optional U-Net border weights and elastic "
                   "deformation; a held-out split reports the Dice. Saves to models/unet_segmentation.")
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
                                                  "tooltip": "Share of the images held out to report the Dice."}),
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
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def _folder_dataset(self, folder: str) -> Any:
        root = get_host().input_directory().resolve()
        target = (root / folder).resolve()
        if Path(folder).is_absolute() or (root not in target.parents and target != root):
            raise InputError(f"Train Segmentation U-Net: folder {folder!r} must be inside the input folder {root}")
        return load_pair_folder(target)

    def train(self, seg_unet: Any, steps: int = 150, batch_size: int = 8, learning_rate: float = 0.003,
              schedule: str = "cosine", loss: str = "ce+dice", augmentation: str = AUGMENTATIONS[0],
              border_weights: bool = False, validation_fraction: float = 0.2, seed: int = 0,
              filename_prefix: str = "unet_lab/segmentation", images: torch.Tensor | None = None,
              masks: torch.Tensor | None = None, folder: str = "", validation_images: torch.Tensor | None = None,
              validation_masks: torch.Tensor | None = None, unique_id: Any = None) -> dict[str, Any]:
        seg = _check_seg(seg_unet, "Train Segmentation U-Net")
        if images is not None or masks is not None:
            if images is None or masks is None:
                raise InputError("Train Segmentation U-Net: connect both 'images' and 'masks'")
            data = dataset_from_batches(images, masks, "images", "masks")
        elif folder and folder.strip():
            data = self._folder_dataset(folder.strip())
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
                             normalization=dict(getattr(seg.meta, "normalization", {}) or {}))
        model = copy.deepcopy(seg.model).to(torch.device("cpu"))
        meta = copy.deepcopy(seg.meta)
        host = get_host()
        device = host.device()
        try:
            result = train_segmentation(model, data, config, progress=_progress(int(steps), unique_id), device=device)
            held_dice = None if held_out is None else held_out_dice(model, held_out, config, device)
        finally:
            model.to(torch.device("cpu"))
            host.release_memory()
        trained = SegUNet(model, meta, f"{seg.name} (trained)")
        lines = [result.report()]
        if held_dice is not None:
            lines.insert(0, f"held-out Dice {held_dice:.4f} on {len(held_out)} separate validation image(s)")
        if filename_prefix and filename_prefix.strip():
            path = _save(trained, filename_prefix)
            trained.name = path.name
            lines.append(f"saved to {path}")
        report = "\n".join(lines)
        log.info("Train Segmentation U-Net: %s", report)
        return {"ui": {"text": [report]}, "result": (trained, report)}


class UNetLabSaveSegmentationUNet:
    DESCRIPTION = ("Saves a segmentation U-Net as one safetensors file (architecture, hyper-parameters, "
                   "normalisation, class names and threshold in its header) in models/unet_segmentation, numbered "
                   "after the prefix, never overwriting a file.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("The path of the file written.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "seg_unet": (SEG_TYPE, {"tooltip": "The model to save."}),
                "filename_prefix": ("STRING", {"default": "unet_lab/segmentation", "tooltip": "Relative name in "
                                    "models/unet_segmentation; '_00001_.safetensors' (the next free number) is "
                                    "appended."}),
            },
        }

    def save(self, seg_unet: Any, filename_prefix: str = "unet_lab/segmentation") -> dict[str, Any]:
        seg = _check_seg(seg_unet, "Save Segmentation U-Net")
        path = _save(seg, filename_prefix)
        log.info("Save Segmentation U-Net: wrote %s", path)
        return {"ui": {"text": [str(path)]}, "result": (str(path),)}


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


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "UNetLabLoadSegmentationUNet": UNetLabLoadSegmentationUNet,
    "UNetLabSegmentImage": UNetLabSegmentImage,
    "UNetLabTrainSegmentationUNet": UNetLabTrainSegmentationUNet,
    "UNetLabSaveSegmentationUNet": UNetLabSaveSegmentationUNet,
    "UNetLabSyntheticSegmentationData": UNetLabSyntheticSegmentationData,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "UNetLabLoadSegmentationUNet": "Load Segmentation U-Net",
    "UNetLabSegmentImage": "Segment Image",
    "UNetLabTrainSegmentationUNet": "Train Segmentation U-Net",
    "UNetLabSaveSegmentationUNet": "Save Segmentation U-Net",
    "UNetLabSyntheticSegmentationData": "Synthetic Segmentation Data",
}
