"""Accelerate UNet: the diffusion model's forward through cached CUDA graphs (both hosts)."""

from __future__ import annotations

import logging
from typing import Any

from .host import get_host

log = logging.getLogger(__name__)


class UNetLabAccelerateUNet:
    DESCRIPTION = ("Runs the diffusion model's forward through CUDA graphs: the first call of each input "
                   "signature (latent size, batch, cond/uncond composition, patches, weights) is captured, later "
                   "calls replay it, which removes the per-kernel launch cost that dominates small latents "
                   "(SD-Turbo, SDXL-Turbo, 512 px). Outputs equal the eager ones bitwise. LoRA, Swap UNet and "
                   "the skip gate compose with it: a changed patch or strength captures anew. Runs eagerly, "
                   "saying why in the log, on the CPU, when ComfyUI loads the model partially (low VRAM), for "
                   "training, or if a capture fails. Each cached graph holds its activations in GPU memory.")
    CATEGORY = "UNet Lab/diffusion"
    FUNCTION = "accelerate"
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "report")
    OUTPUT_TOOLTIPS = ("The model running through CUDA graphs (a clone; the input MODEL is unchanged). On the "
                       "CPU, or with enabled off, the input MODEL itself.",
                       "What the node set up, or why it does nothing here.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model, patched or not (patch it before or "
                                           "after this node: every patch the sampler sees is part of the key)."}),
            "enabled": ("BOOLEAN", {"default": True, "tooltip": "Off: pass the model through unchanged."}),
            "compile": ("BOOLEAN", {"default": False, "tooltip": (
                "Also torch.compile (inductor) the UNet under the capture: fewer, fused kernels; the first "
                "call per input size compiles for tens of seconds to minutes. Needs Triton.")}),
            "max_graphs": ("INT", {"default": 4, "min": 1, "max": 32, "tooltip": (
                "How many captured signatures to keep (least recently used dropped). cond and uncond in "
                "separate calls, or several latent sizes, each need one.")}),
        }}

    def accelerate(self, model: Any, enabled: bool, compile: bool, max_graphs: int) -> tuple[Any, str]:
        from ..unet_core.acceleration.accelerator import AccelerationSettings

        if not enabled:
            return (model, "Accelerate UNet is off: the model runs as it came.")
        host = get_host()
        device = host.device()
        if device.type != "cuda":
            return (model, f"Accelerate UNet does nothing here: the model runs on {device}, and CUDA graphs "
                           f"need a CUDA GPU. The model passes through unchanged.")
        settings = AccelerationSettings(enabled=True, compile=bool(compile), max_graphs=int(max_graphs))
        clone, _accelerator = host.accelerate_unet(model, settings)
        report = (f"Accelerate UNet on {device}: CUDA graphs per input signature, up to {settings.max_graphs} "
                  f"kept{', torch.compile under the capture' if settings.compile else ''}. The first step of each "
                  f"new signature captures (and compiles); later steps replay. The log says when a call runs "
                  f"eagerly and why (partial low-VRAM load, training, capture failure).")
        log.info("%s", report)
        return (clone, report)


NODE_CLASS_MAPPINGS: dict[str, type] = {"UNetLabAccelerateUNet": UNetLabAccelerateUNet}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {"UNetLabAccelerateUNet": "Accelerate UNet"}
