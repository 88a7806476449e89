"""Pixel diffusion nodes: load, sample and train DDPM-family U-Nets; synthetic shapes to train on.

Thin adapters over ``unet_core.pixel_diffusion``: files are read and checked by its loader,
sampling and training run there, the host supplies folders, device and progress.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .choices import model_files
from .host import get_host
from .host.paths import save_target
from .progress import interruptible, progress_callback

log = logging.getLogger(__name__)

CATEGORY = "UNet Lab/pixel diffusion"
PIXEL_TYPE = "PIXEL_UNET"
FOLDER = "diffusion_models"
SAMPLERS = ["ddim", "dpmpp_2m", "ddpm"]
SCHEDULES = ["auto", "linear", "cosine"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SEED_MAX = 2**31 - 1


def _check(pixel_unet: Any, node: str) -> Any:
    from ..unet_core.errors import InputError
    from ..unet_core.pixel_diffusion.loading import PixelModel

    if not isinstance(pixel_unet, PixelModel):
        raise InputError(f"{node}: input 'pixel_unet' is {type(pixel_unet).__name__}, not a PIXEL_UNET from "
                         "Load Pixel Diffusion U-Net or Train Pixel Diffusion U-Net")
    return pixel_unet


class UNetLabLoadPixelDiffusionUNet:
    DESCRIPTION = ("Loads a pixel-space diffusion U-Net (DDPM family) from models/diffusion_models: a diffusers "
                   "UNet2DModel (google/ddpm-* folders, .safetensors or .bin, pick the weight file inside the "
                   "folder) or an OpenAI improved/guided-diffusion .pt state dict (config inferred from its "
                   "shapes), or one trained here. Pickles are read weights-only. SD UNets are refused.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (PIXEL_TYPE, "STRING")
    RETURN_NAMES = ("pixel_unet", "info")
    OUTPUT_TOOLTIPS = ("The U-Net with its config and sampling defaults.",
                       "What the file is: layout, resolution, classes, config and which parts came by rule.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "unet_name": (model_files(FOLDER), {"tooltip": "A pixel diffusion U-Net file in models/diffusion_models (for a "
                                                "diffusers folder, its diffusion_pytorch_model file)."}),
            "weight_dtype": (list(DTYPES), {"default": "fp32", "tooltip": (
                "Dtype of the weights while loaded: fp32 everywhere; fp16/bf16 halve memory on a GPU.")}),
        }}

    def load(self, unet_name: str, weight_dtype: str = "fp32") -> dict[str, Any]:
        from ..unet_core.pixel_diffusion.loading import load_pixel_unet

        pm = load_pixel_unet(get_host().resolve(FOLDER, unet_name), dtype=DTYPES.get(weight_dtype, torch.float32))
        log.info("Load Pixel Diffusion U-Net: %s\n%s", unet_name, pm.info)
        return {"ui": {"text": [pm.info]}, "result": (pm, pm.info)}


class UNetLabSamplePixelDiffusion:
    DESCRIPTION = ("Samples images from a pixel diffusion U-Net with DDIM (eta 0: deterministic), DPM-Solver++ 2M "
                   "(good in about 20 steps) or ancestral DDPM (all steps, learned variance used), from a seed. "
                   "Class-conditional models take a class label; models with a null class take classifier-free "
                   "guidance. Shows a preview every few steps.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The sampled images [batch, size, size, 3] in 0..1.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "pixel_unet": (PIXEL_TYPE, {"tooltip": "The model from Load or Train Pixel Diffusion U-Net."}),
            "sampler": (SAMPLERS, {"default": "ddim", "tooltip": "ddim: DDIM (eta below); dpmpp_2m: DPM-Solver++ "
                                   "2M; ddpm: ancestral DDPM, meant for many steps (up to the training steps)."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": 4000, "tooltip": "Denoising steps (at most the "
                              "model's training steps, usually 1000)."}),
            "eta": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "DDIM only: 0 is "
                              "deterministic, 1 is as noisy as DDPM."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Seed of the starting noise (and "
                             "of random class labels): the same seed gives the same images on any device."}),
            "batch_size": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "Number of images."}),
            "size": ("INT", {"default": 0, "min": 0, "max": 1024, "step": 8, "tooltip": "Width = height in px; 0 "
                             "= the model's training resolution."}),
            "class_label": ("INT", {"default": -1, "min": -1, "max": 100000, "tooltip": "Class of class-"
                                    "conditional models; -1 = a random class per image. Ignored otherwise."}),
            "guidance": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": "Classifier-"
                                   "free guidance scale (models with a null class only); 1 = off."}),
            "schedule": (SCHEDULES, {"default": "auto", "tooltip": "Noise schedule: auto = the model's own (stored "
                                     "or by family rule); override when the report's rule is wrong."}),
            "preview_every": ("INT", {"default": 5, "min": 0, "max": 1000, "tooltip": "Show the current clean-image "
                                      "estimate every N steps (0 = no previews)."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def sample(self, pixel_unet: Any, sampler: str = "ddim", steps: int = 50, eta: float = 0.0, seed: int = 0,
               batch_size: int = 4, size: int = 0, class_label: int = -1, guidance: float = 1.0,
               schedule: str = "auto", preview_every: int = 5, unique_id: Any = None) -> tuple[torch.Tensor]:
        from ..unet_core.errors import InputError
        from ..unet_core.pixel_diffusion.pipeline import sample_images
        from ..unet_core.pixel_diffusion.sampling import SampleSettings

        pm = _check(pixel_unet, "Sample Pixel Diffusion")
        if steps > pm.config.num_train_timesteps:
            raise InputError(f"Sample Pixel Diffusion: steps {steps} exceed the model's "
                             f"{pm.config.num_train_timesteps} training steps")
        host = get_host()
        on_progress = interruptible(host.preview_progress(int(steps), None if unique_id is None else str(unique_id)))
        try:
            images = sample_images(pm, SampleSettings(sampler, int(steps), float(eta), float(guidance)), int(seed),
                                   int(batch_size), int(size), int(class_label), schedule, host.device(),
                                   int(preview_every), on_progress)
        except InputError as exc:
            raise InputError(f"Sample Pixel Diffusion: {exc}") from None
        finally:
            pm.unet.to("cpu")
            host.release_memory()
        return (images,)


class UNetLabTrainPixelDiffusionUNet:
    DESCRIPTION = ("Trains a small pixel diffusion U-Net from scratch on an IMAGE batch or a folder of images "
                   "(epsilon prediction, cosine schedule, EMA weights), and saves the EMA model as safetensors "
                   "with its config in models/diffusion_models (numbered, never overwriting). Defaults finish in "
                   "minutes on a laptop CPU at 32 px.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = (PIXEL_TYPE, "STRING")
    RETURN_NAMES = ("pixel_unet", "report")
    OUTPUT_TOOLTIPS = ("The EMA model, ready for Sample Pixel Diffusion.", "Losses and where the model was saved.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        from ..unet_core.pixel_diffusion.pipeline import PRESETS

        names = list(PRESETS)
        return {"required": {
            "model_size": (names, {"default": names[0], "tooltip": "Widths of the U-Net levels (and parameters)."}),
            "steps": ("INT", {"default": 1500, "min": 1, "max": 1000000, "tooltip": "Optimiser steps (each one "
                              "batch)."}),
            "batch_size": ("INT", {"default": 32, "min": 1, "max": 1024, "tooltip": "Images per step."}),
            "learning_rate": ("FLOAT", {"default": 0.001, "min": 1e-6, "max": 0.1, "step": 0.0001, "tooltip": "AdamW "
                                        "peak learning rate (after a 100-step warm-up)."}),
            "ema_decay": ("FLOAT", {"default": 0.995, "min": 0.0, "max": 0.99999, "step": 0.001, "tooltip": "Decay "
                                    "of the weights' moving average (the saved model)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Seed of the initial weights, "
                             "batches, timesteps and noise."}),
            "size": ("INT", {"default": 32, "min": 8, "max": 512, "step": 8, "tooltip": "Folder images are "
                             "centre-cropped and resized to this; IMAGE inputs must already be square."}),
            "filename_prefix": ("STRING", {"default": "unet_lab/pixel_diffusion", "tooltip": "Save as <prefix>_"
                                "00001_.safetensors in models/diffusion_models; empty = do not save."}),
        }, "optional": {
            "images": ("IMAGE", {"tooltip": "Training images [B, S, S, 3] (e.g. Synthetic Shapes)."}),
            "folder": ("STRING", {"default": "", "tooltip": "Instead of images: a folder of images inside the "
                                  "input folder."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def train(self, model_size: str, steps: int = 1500, batch_size: int = 32, learning_rate: float = 0.001,
              ema_decay: float = 0.995, seed: int = 0, size: int = 32, filename_prefix: str = "",
              images: torch.Tensor | None = None, folder: str = "", unique_id: Any = None) -> dict[str, Any]:
        from ..unet_core.checkpoints.writer import next_free_path
        from ..unet_core.errors import InputError
        from ..unet_core.pixel_diffusion.pipeline import folder_images, train_from_images
        from ..unet_core.pixel_diffusion.saving import save_pixel_unet
        from ..unet_core.pixel_diffusion.training import TrainSettings

        node = "Train Pixel Diffusion U-Net"
        host = get_host()
        stem = None
        if filename_prefix and filename_prefix.strip():   # checked before any training
            stem = save_target(host.save_directory(FOLDER), filename_prefix.strip(), node)
        if images is None:
            if not folder or not folder.strip():
                raise InputError(f"{node}: connect 'images' or name a 'folder' of images")
            root = host.input_directory().resolve()
            target = (root / folder.strip()).resolve()
            if root not in target.parents and target != root or not target.is_dir():
                raise InputError(f"{node}: folder {folder!r} is not a folder inside the input folder {root}")
            images = folder_images(target, int(size))
        progress = progress_callback(int(steps), unique_id)
        settings = TrainSettings(steps=int(steps), batch_size=int(batch_size), learning_rate=float(learning_rate),
                                 ema_decay=float(ema_decay), seed=int(seed))
        try:
            pm, result = train_from_images(images, model_size, settings, host.device(), progress)
        except InputError as exc:
            raise InputError(f"{node}: {exc}") from None
        finally:
            host.release_memory()
        tail = result.losses[-100:]
        lines = [f"trained {model_size} for {steps} steps on {images.shape[0]} images of {images.shape[1]} px; "
                 f"loss first {result.losses[0]:.4f}, mean of the last {len(tail)} {sum(tail) / len(tail):.4f}"]
        if stem is not None:
            path = save_pixel_unet(next_free_path(stem.with_name(stem.name + ".safetensors")), pm.unet, pm.config,
                                   {"unet_lab.trained_steps": str(steps)})
            pm.source = str(path)
            lines.append(f"saved to {path}")
        text = "\n".join(lines)
        pm.info = text
        log.info("%s: %s", node, text)
        return {"ui": {"text": [text]}, "result": (pm, text)}


class UNetLabSyntheticShapes:
    DESCRIPTION = ("Makes seeded synthetic images: one flat-coloured disc, square or triangle on a dark "
                   "background per image. Training data for a tiny pixel diffusion model with no input files.")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Images [count, size, size, 3] in 0..1.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "count": ("INT", {"default": 512, "min": 1, "max": 65536, "tooltip": "Number of images."}),
            "size": ("INT", {"default": 32, "min": 8, "max": 1024, "step": 8, "tooltip": "Width = height, px."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "The same seed gives the same "
                             "images on every machine."}),
        }}

    def make(self, count: int = 512, size: int = 32, seed: int = 0) -> tuple[torch.Tensor]:
        from ..unet_core.pixel_diffusion.shapes import make_shapes

        images, _ = make_shapes(int(count), int(size), int(seed))
        return (images,)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "UNetLabLoadPixelDiffusionUNet": UNetLabLoadPixelDiffusionUNet,
    "UNetLabSamplePixelDiffusion": UNetLabSamplePixelDiffusion,
    "UNetLabTrainPixelDiffusionUNet": UNetLabTrainPixelDiffusionUNet,
    "UNetLabSyntheticShapes": UNetLabSyntheticShapes,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "UNetLabLoadPixelDiffusionUNet": "Load Pixel Diffusion U-Net",
    "UNetLabSamplePixelDiffusion": "Sample Pixel Diffusion",
    "UNetLabTrainPixelDiffusionUNet": "Train Pixel Diffusion U-Net",
    "UNetLabSyntheticShapes": "Synthetic Shapes",
}
