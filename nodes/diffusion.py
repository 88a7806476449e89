"""Diffusion UNet nodes: load, inspect, swap and save UNet-only checkpoints.

Thin adapters: files are read, checked and written by ``unet_core.checkpoints``; the MODEL
is built, swapped and baked by the host (ComfyUI's model patcher inside ComfyUI, UNet Lab's
standalone patcher elsewhere).
"""

from __future__ import annotations

import logging
from typing import Any

from .choices import model_files
from .host import get_host
from .host.paths import check_prefix, save_target

# unet_core is imported inside the functions (keeps INPUT_TYPES / pack import cheap).

log = logging.getLogger(__name__)

CATEGORY = "UNet Lab/diffusion"
WEIGHT_DTYPES = ["default", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"]
PREDICTIONS = ["auto", "epsilon", "v_prediction"]
SAVE_LAYOUTS = ["ldm", "ldm_prefixed", "diffusers"]
SAVE_DTYPES = ["keep", "fp16", "bf16", "fp32", "fp8_e4m3fn"]
INSPECT_FOLDERS = ("diffusion_models", "checkpoints")


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "?"


class UNetLabLoadUNet:
    """Load a UNet-only diffusion checkpoint (SD1, SD2, SDXL, inpaint; LDM or diffusers layout)."""

    DESCRIPTION = ("Loads a UNet-only file from models/diffusion_models (or the legacy models/unet): SD1.x, "
                   "SD2.x/SD-Turbo, SDXL/SDXL-Turbo and their inpainting variants, in the LDM (bare or "
                   "model.diffusion_model.-prefixed) or diffusers layout. Reports what the file is.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "info")
    OUTPUT_TOOLTIPS = ("The diffusion model, ready for samplers and patch nodes.",
                       "What the file holds: family, layout, dtype, config, prediction type, Turbo hints.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "unet_name": (model_files("diffusion_models"), {
                "tooltip": "A UNet-only file from models/diffusion_models (or models/unet)."}),
            "weight_dtype": (WEIGHT_DTYPES, {"default": "default", "tooltip": (
                "Dtype the weights are stored in while loaded. default: as in the file (standalone) or "
                "ComfyUI's choice. fp8 halves memory again; it computes in a supported dtype.")}),
            "prediction": (PREDICTIONS, {"default": "auto", "tooltip": (
                "auto: what the file says (metadata, v_pred key, SD2 weight rule), else epsilon. "
                "Force epsilon or v_prediction when the detection is wrong.")}),
        }}

    def load(self, unet_name: str, weight_dtype: str, prediction: str) -> tuple[Any, str]:
        from ..unet_core.checkpoints.loader import load_unet
        from ..unet_core.checkpoints.report import describe, summary
        from ..unet_core.diffusion.patcher import weight_dtype_from_name

        host = get_host()
        path = host.resolve("diffusion_models", unet_name)
        state_dict, spec = load_unet(path)
        if prediction != "auto":
            spec.prediction = prediction
            spec.prediction_source = "chosen on the Load UNet node"
            spec.prediction_forced = True
        dtype = weight_dtype_from_name(weight_dtype)
        model = host.model_from_unet_state_dict(state_dict, spec, dtype)
        info = describe(spec)
        info += f"\nloaded with weight dtype {weight_dtype}" + ("" if dtype is None else f" ({_dtype_name(dtype)})")
        log.info("UNet Lab: loaded %s\n%s", unet_name, info)
        return {"ui": {"unet_info": [summary(spec)]}, "result": (model, info)}


class UNetLabInspectUNet:
    """Describe a diffusion model file without loading its tensors."""

    DESCRIPTION = ("Reads only the header of a file in diffusion_models or checkpoints and reports what it is: "
                   "UNet-only or full checkpoint (and what else it holds), family, layout, dtypes, config, "
                   "prediction type and Turbo hints; a LoRA, VAE or text encoder is named as such.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_TOOLTIPS = ("The readable report (also shown on the node).",)
    FUNCTION = "inspect"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        files = [f"{folder}/{name}" for folder in INSPECT_FOLDERS for name in model_files(folder)]
        return {"required": {
            "file": (files, {"tooltip": "A file from models/diffusion_models (or unet) or models/checkpoints; "
                                        "the folder is the first part of the name."}),
        }}

    def inspect(self, file: str) -> dict[str, Any]:
        from ..unet_core.checkpoints.report import describe, summary
        from ..unet_core.checkpoints.sniff import sniff
        from ..unet_core.errors import InputError

        folder, _, name = file.partition("/")
        if folder not in INSPECT_FOLDERS or not name:
            raise InputError(f"Inspect UNet: {file!r} must start with one of {', '.join(INSPECT_FOLDERS)}/")
        spec = sniff(get_host().resolve(folder, name))
        report = describe(spec)
        return {"ui": {"text": [report], "unet_info": [summary(spec)]}, "result": (report,)}


class UNetLabSwapUNet:
    """Put a UNet file's weights into a MODEL from any loader, keeping its patches and options."""

    DESCRIPTION = ("Replaces the UNet weights of a MODEL (from any loader or patch node) with those of a UNet "
                   "file of the same family; the MODEL's patches (LoRA…) and model options carry over and apply "
                   "on top. The input MODEL is left unchanged.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "info")
    OUTPUT_TOOLTIPS = ("A clone of the model running the file's UNet weights.",
                       "What the file is, and notes (e.g. a prediction type that differs from the model's).")
    FUNCTION = "swap"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model whose UNet weights are replaced; it is left unchanged."}),
            "unet_name": (model_files("diffusion_models"), {
                "tooltip": "A UNet-only file of the same family (SD1, SD2 or SDXL) from models/diffusion_models."}),
        }}

    def swap(self, model: Any, unet_name: str) -> tuple[Any, str]:
        from ..unet_core.checkpoints.loader import load_unet
        from ..unet_core.checkpoints.report import describe
        from ..unet_core.diffusion.swap import check_swap

        host = get_host()
        info = get_host().model_info(model)
        path = host.resolve("diffusion_models", unet_name)
        state_dict, spec = load_unet(path)
        check_swap(info.get("family"), info.get("config"), spec.family, spec.config, unet_name)
        swapped = host.swap_unet(model, state_dict, spec)
        text = describe(spec)
        model_pred = info.get("prediction")
        if spec.prediction in ("epsilon", "v_prediction") and model_pred and spec.prediction != model_pred:
            note = (f"note: the file says {spec.prediction} but the model samples as {model_pred}; "
                    f"add a ModelSamplingDiscrete node if the file is right")
            log.warning("UNet Lab Swap UNet (%s): %s", unet_name, note)
            text += "\n" + note
        return swapped, text


class UNetLabSaveUNet:
    """Save a MODEL's UNet (patches merged) as a UNet-only safetensors file."""

    DESCRIPTION = ("Writes the UNet of a MODEL, with its weight patches (LoRA…) merged, as a UNet-only "
                   "safetensors file in models/diffusion_models: LDM (what ComfyUI's UNet loader reads), "
                   "prefixed LDM or diffusers layout, with modelspec metadata. Never overwrites: names are "
                   "numbered prefix_00001_.safetensors, prefix_00002_…")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("The full path of the file written.",)
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to save; its weight patches are merged into the file."}),
            "filename_prefix": ("STRING", {"default": "unet_lab/UNet", "tooltip": (
                "File name start inside models/diffusion_models (sub-folders allowed); a number is added.")}),
            "layout": (SAVE_LAYOUTS, {"default": "ldm", "tooltip": (
                "ldm: bare LDM keys (ComfyUI's Load Diffusion Model); ldm_prefixed: model.diffusion_model. "
                "keys; diffusers: diffusers' UNet2DConditionModel names.")}),
            "dtype": (SAVE_DTYPES, {"default": "keep", "tooltip": (
                "Dtype of the saved tensors; keep = as the model holds them.")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str = "unet_lab/UNet") -> bool | str:
        from ..unet_core.errors import HostError, InputError

        try:
            check_prefix(get_host().save_directory("diffusion_models"), filename_prefix, "Save UNet")
        except (InputError, HostError) as error:
            return str(error)
        return True

    def save(self, model: Any, filename_prefix: str, layout: str, dtype: str) -> dict[str, Any]:
        from ..unet_core.checkpoints.writer import next_free_path, save_unet
        from ..unet_core.diffusion.patcher import cast_state_dict, weight_dtype_from_name
        from ..unet_core.errors import InputError

        host = get_host()
        info = get_host().model_info(model)
        config = info.get("config")
        if config is None:
            raise InputError("Save UNet: this MODEL has no SD-family UNet config")
        stem = save_target(host.save_directory("diffusion_models"), filename_prefix, "Save UNet")
        target = next_free_path(stem.with_name(stem.name + ".safetensors"))
        state_dict = cast_state_dict(host.unet_state_dict_for_saving(model), weight_dtype_from_name(dtype))
        family = info.get("family") or "custom"
        written = save_unet(target, state_dict, config, layout=layout, dtype=None,
                            prediction=info.get("prediction"),
                            source=f"UNet Lab Save UNet ({family})",
                            metadata={"unet_lab.patched_keys": str(info.get("patched_keys", 0))})
        log.info("UNet Lab: saved %s", written)
        return {"ui": {"text": [str(written)]}, "result": (str(written),)}


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "UNetLabLoadUNet": UNetLabLoadUNet,
    "UNetLabInspectUNet": UNetLabInspectUNet,
    "UNetLabSwapUNet": UNetLabSwapUNet,
    "UNetLabSaveUNet": UNetLabSaveUNet,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "UNetLabLoadUNet": "Load UNet",
    "UNetLabInspectUNet": "Inspect UNet",
    "UNetLabSwapUNet": "Swap UNet",
    "UNetLabSaveUNet": "Save UNet",
}
