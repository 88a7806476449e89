"""Segmentation nodes: load, segment and save segmentation U-Nets (training nodes: :mod:`.segmentation_train`).

Thin adapters: inputs are checked and handed to ``unet_core.segmentation``; outputs are shaped
into ComfyUI types (MASK [B, H, W] float 0..1 at the input's size, IMAGE [B, H, W, 3]). The
model travels as ``SEG_UNET`` (a ``SegUNet``: model + checkpoint meta + name).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..unet_core.segmentation.checkpoint import SegmentationMeta, load_segmentation
from ..unet_core.segmentation.inference.device_io import SEGMENT_SPEEDS
from ..unet_core.segmentation.inference.outputs import OVERLAY_STYLES, compare_masks, overlay
from ..unet_core.segmentation.inference.segment import SegmentOptions, segment
from ..unet_core.segmentation.inference.tiling import BLENDS
from ..unet_core.segmentation.model import SegUNet
from ..unet_core.segmentation.registry import ARCHITECTURES, VOLUME_ARCHITECTURES, build_model, is_volume_architecture
from .choices import model_files
from .host import get_host
from .host.standalone_nodes import PreviewImage
from .progress import progress_callback
from .segmentation_common import (
    CATEGORY,
    FOLDER,
    SEG_TYPE,
    check_save_prefix,
    check_seg_unet,
    save_seg_unet,
    validation_message,
)
from .segmentation_train import UNetLabSyntheticSegmentationData, UNetLabTrainSegmentationUNet

log = logging.getLogger(__name__)

NEW_PREFIX = "(new) "
SPEED_TOOLTIP = ("How the model runs. auto: fast on a CUDA GPU, exact elsewhere. exact: the weights as stored, "
                 "float32: the reference result. fast: BatchNorm folded into the convolutions and U-Net "
                 "decoder steps without their concatenation (the same math); on a CUDA GPU also bfloat16 (fp16 "
                 "without bf16), channels_last and fused cuDNN kernels, probabilities within a few "
                 "hundredths of exact, so masks can "
                 "differ only where the probability is that close to the threshold; on the CPU only the "
                 "rewrites (float32, same result to ~1e-5). compiled: the folded model under torch.compile: "
                 "the first run compiles (up to minutes), later runs reuse it; falls back to fast when "
                 "compiling fails.")


def _model_choices() -> list[str]:
    return [NEW_PREFIX + a for a in ARCHITECTURES + VOLUME_ARCHITECTURES] + model_files(FOLDER)


class UNetLabLoadSegmentationUNet:
    DESCRIPTION = ("Loads a segmentation U-Net from the unet_segmentation model folder (our safetensors format, "
                   "a milesial Pytorch-UNet .pth, an smp state dict or save_pretrained folder, a U-Net 3+ state "
                   "dict of the authors' code, a pytorch-3dunet or MONAI 3D checkpoint), or builds a fresh, "
                   "untrained one ('(new) <architecture>'; unet3d is the 3D U-Net for volumes) with the depth, "
                   "width and classes below, for training.")
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
                # volumes are gray z-stacks (RGB slices are read as luminance); 2D models take RGB
                channels = 1 if is_volume_architecture(architecture) else 3
                model = build_model(architecture, in_channels=channels, out_channels=int(classes), depth=int(depth),
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
                "overlay_style": (list(OVERLAY_STYLES), {"default": "outlines", "tooltip": "How the overlay shows "
                                  "the masks: a light tint with an outline around every connected object (touching "
                                  "objects stay apart), the same with a colour per object, or a plain tint. The "
                                  "MASK outputs are the same either way."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def segment(self, seg_unet: Any, image: torch.Tensor, tile_size: int = 512, overlap: float = 0.25,
                flip_tta: bool = False, threshold: float = -1.0, class_mode: str = "foreground",
                blend: str = "gaussian", ground_truth: torch.Tensor | None = None, speed: str = "auto",
                overlay_style: str = "outlines", unique_id: Any = None) -> dict[str, Any]:
        seg = check_seg_unet(seg_unet, "Segment Image")
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
            options = SegmentOptions(
                tile_size=int(tile_size), overlap=float(overlap), blend=blend, tta_flips=bool(flip_tta),
                threshold=None if threshold < 0 else float(threshold), class_mode=class_mode, device=device,
                progress=progress_callback(1, unique_id), free_memory=host.free_memory(torch.device("cpu")),
                extra_output_bytes=overlay_bytes, release_memory=host.release_memory, speed=speed)
            result = segment(model, seg.meta, image, options)
        finally:
            model.to(original)
            host.release_memory()
        tinted = overlay(image, result.masks, result.plane_names, style=overlay_style)
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

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str = "unet_lab/segmentation") -> bool | str:
        return validation_message(check_save_prefix, filename_prefix or "", "Save Segmentation U-Net")

    def save(self, seg_unet: Any, filename_prefix: str = "unet_lab/segmentation") -> dict[str, Any]:
        seg = check_seg_unet(seg_unet, "Save Segmentation U-Net")
        path = save_seg_unet(seg, filename_prefix)
        log.info("Save Segmentation U-Net: wrote %s", path)
        return {"ui": {"text": [str(path)]}, "result": (str(path),)}


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
