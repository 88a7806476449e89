"""LoRA nodes: apply a LoRA with per-block weights, or bake it into the weights.

Thin adapters: the file is read and checked by ``unet_core.lora``; the patches go through
the host's model patcher (ComfyUI's own adapters inside ComfyUI).
"""

from __future__ import annotations

import logging
from typing import Any

from .choices import model_files
from .host import get_host

# unet_core is imported inside the functions: importing this module stays cheap, and a pack loaded
# under a dotted name whose root package does not exist (see tests/pack/test_pack_import.py) still imports.

log = logging.getLogger(__name__)

_SPEC_HELP = ("Per-block weights. Named: 'default=1, IN04=0.5, OUT03-05=0.2, M00=0' (also IN=, OUT=, MID=, "
              "BASE=). Or a positional vector: SD1 17 or 26 values, SDXL 12 or 20 (BASE first). Overrides the "
              "preset where given; empty = preset, or 1 everywhere.")


def _inputs() -> dict[str, Any]:
    from ..unet_core.lora.blocks import NO_PRESET, PRESETS

    loras = model_files("loras")
    return {"required": {
        "model": ("MODEL", {"tooltip": "The diffusion model to patch; it is left unchanged (a clone is patched)."}),
        "lora_name": (loras, {"tooltip": "A LoRA file from the loras folder (kohya, diffusers/PEFT, LyCORIS "
                                         "LoCon/LoHa/LoKr, full diff, DoRA)."}),
        "strength": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                               "tooltip": "Overall LoRA strength; each block uses strength x its block weight."}),
        "preset": ([NO_PRESET, *PRESETS], {"default": NO_PRESET,
                                           "tooltip": "A block-weight preset (sd-webui-lora-block-weight / "
                                                      "Inspire Pack vectors: SD-* for SD1/SD2, SDXL-* for SDXL)."}),
        "block_spec": ("STRING", {"multiline": True, "default": "", "tooltip": _SPEC_HELP}),
    }}


def _plan(model: Any, lora_name: str, strength: float, preset: str, block_spec: str) -> tuple[Any, Any, dict]:
    from ..unet_core.errors import LoraError
    from ..unet_core.lora.formats import load_lora_file
    from ..unet_core.lora.plan import model_names, plan_lora
    from ..unet_core.unet_config import UNetConfig

    host = get_host()
    path = host.resolve("loras", lora_name)
    info = host.model_info(model)
    config = info.get("config")
    if not isinstance(config, UNetConfig):
        raise LoraError(f"{lora_name}: this MODEL is not an SD-family UNet (no UNet config); cannot map LoRA keys")
    state = load_lora_file(path)
    names = model_names(host.unet_weight_shapes(model), config)
    plan = plan_lora(state, names, config, info.get("family"), strength=float(strength),
                     block_spec=block_spec, preset=preset, source=lora_name)
    return host, plan, state


def _with_ui(host: Any, model: Any, result_model: Any, report: str) -> dict[str, Any]:
    """Node result plus what the web editor shows: the report and the model's family (its slider layout)."""
    family = host.model_info(model).get("family") or ""
    return {"ui": {"text": [report], "unet_lab_family": [family]}, "result": (result_model, report)}


class UNetLabApplyLoRABlockWeights:
    """Apply a LoRA to a MODEL with one weight per UNet block."""

    DESCRIPTION = ("Applies a LoRA to the UNet with per-block weights (IN00…, M00, OUT00…). Reads kohya, "
                   "diffusers/PEFT, LyCORIS (LoCon, LoHa, LoKr), full-diff and DoRA files, and reports what "
                   "each block received, keys that matched nothing and text-encoder keys.")
    CATEGORY = "UNet Lab/lora"
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "report")
    OUTPUT_TOOLTIPS = ("A patched clone of the model (patches merge when the model loads).",
                       "Per block: modules hit and the weight used; unmatched and text-encoder keys.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _inputs()

    def apply(self, model: Any, lora_name: str, strength: float, preset: str, block_spec: str) -> dict[str, Any]:
        host, plan, state = _plan(model, lora_name, strength, preset, block_spec)
        patched, applied = host.add_lora_patches(model, state, plan)
        report = plan.report(applied)
        log.info("UNet Lab LoRA\n%s", report)
        return _with_ui(host, model, patched, report)


class UNetLabBakeLoRA:
    """Merge a LoRA into the UNet weights, with per-block weights."""

    DESCRIPTION = ("Merges a LoRA into the UNet weights with per-block weights and returns a MODEL whose weights "
                   "hold the result (save it with Save UNet). The input MODEL is left unchanged.")
    CATEGORY = "UNet Lab/lora"
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "report")
    OUTPUT_TOOLTIPS = ("A new model with the LoRA merged into its weights.",
                       "Per block: modules hit and the weight used; unmatched and text-encoder keys.")
    FUNCTION = "bake"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _inputs()

    def bake(self, model: Any, lora_name: str, strength: float, preset: str, block_spec: str) -> dict[str, Any]:
        host, plan, state = _plan(model, lora_name, strength, preset, block_spec)
        patched, applied = host.add_lora_patches(model, state, plan)
        baked = host.bake_lora_patches(patched)
        report = plan.report(applied, action="baked")
        log.info("UNet Lab LoRA bake\n%s", report)
        return _with_ui(host, model, baked, report)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "UNetLabApplyLoRABlockWeights": UNetLabApplyLoRABlockWeights,
    "UNetLabBakeLoRA": UNetLabBakeLoRA,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "UNetLabApplyLoRABlockWeights": "Apply LoRA (block weights)",
    "UNetLabBakeLoRA": "Bake LoRA",
}
