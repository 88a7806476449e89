"""The ComfyUI host. Imports ComfyUI's modules lazily, inside each method.

Only ``nodes/host/`` may import ``comfy``, ``folder_paths``, ``comfy.model_management``
or ``comfy.utils``, and only inside functions (``docs/architecture.md``, the dependency rule).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ...unet_core.errors import HostError
from ...unet_core.progress import ProgressCallback
from .base import MODEL_EXTENSIONS, Host
from .paths import resolve_inside

log = logging.getLogger(__name__)

# Our folder name -> ComfyUI's folder_paths key.
_COMFY_KEYS = {"diffusion_models": "diffusion_models", "checkpoints": "checkpoints",
               "loras": "loras", "unet_segmentation": "unet_segmentation", "unet_gates": "unet_gates"}
# Our own folders, registered under ComfyUI's models directory on first use.
_OWN_FOLDERS = ("unet_segmentation", "unet_gates")


def _folder_paths() -> Any:
    import folder_paths

    for name in _OWN_FOLDERS:
        if name not in folder_paths.folder_names_and_paths:
            path = os.path.join(folder_paths.models_dir, name)
            folder_paths.folder_names_and_paths[name] = ([path], set(MODEL_EXTENSIONS))
    return folder_paths


class ComfyHost(Host):
    """Runs nodes inside ComfyUI through folder_paths, model_management and ProgressBar."""

    name = "comfyui"

    def _key(self, folder: str) -> str:
        if folder not in _COMFY_KEYS:
            raise HostError(f"unknown model folder {folder!r}")
        return _COMFY_KEYS[folder]

    def list_files(self, folder: str) -> list[str]:
        return list(_folder_paths().get_filename_list(self._key(folder)))

    def resolve(self, folder: str, name: str) -> Path:
        paths = _folder_paths().get_folder_paths(self._key(folder))
        return resolve_inside([Path(p) for p in paths], name, folder)

    def save_directory(self, folder: str) -> Path:
        path = Path(_folder_paths().get_folder_paths(self._key(folder))[0])
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output_directory(self) -> Path:
        return Path(_folder_paths().get_output_directory())

    def input_directory(self) -> Path:
        return Path(_folder_paths().get_input_directory())

    def temp_directory(self) -> Path:
        return Path(_folder_paths().get_temp_directory())

    def device(self) -> torch.device:
        import comfy.model_management as mm

        return mm.get_torch_device()

    def offload_device(self) -> torch.device:
        import comfy.model_management as mm

        return mm.unet_offload_device()

    def free_memory(self, device: torch.device | None = None) -> int:
        import comfy.model_management as mm

        return int(mm.get_free_memory(device or self.device()))

    def release_memory(self) -> None:
        import comfy.model_management as mm

        mm.soft_empty_cache()

    def progress(self, total: int, node_id: str | None = None) -> ProgressCallback:
        import comfy.utils

        bar = comfy.utils.ProgressBar(max(int(total), 1))

        def report(done: int, total: int | None = None, message: str = "") -> None:
            bar.update_absolute(int(done), int(total) if total else None)

        return report

    def preview_progress(self, total: int, node_id: str | None = None) -> Any:
        import comfy.utils

        bar = comfy.utils.ProgressBar(max(int(total), 1))

        def report(done: int, total_now: int, image: Any = None) -> None:
            preview = None if image is None else ("JPEG", image, 512)
            bar.update_absolute(int(done), int(total_now), preview)

        return report

    def check_interrupted(self) -> None:
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()

    def model_from_unet_state_dict(self, state_dict: dict[str, torch.Tensor], spec: Any,
                                   weight_dtype: torch.dtype | None = None) -> Any:
        import comfy.sd

        options: dict[str, Any] = {}
        if weight_dtype is not None:
            options["dtype"] = weight_dtype
        # ComfyUI's loader pops keys from the dict it is given: hand it a shallow copy.
        model = comfy.sd.load_diffusion_model_state_dict(dict(state_dict), model_options=options)
        if model is None:
            raise HostError(f"ComfyUI could not detect the model type of {getattr(spec, 'path', 'this UNet')}")
        if getattr(spec, "prediction_forced", False):  # the user chose eps / v on the loader
            model = self._apply_prediction(model, getattr(spec, "prediction", None))
        return model

    # -- LoRA patches (unet_core.lora) ------------------------------------------------
    def add_lora_patches(self, model: Any, lora_state_dict: dict[str, torch.Tensor],
                         plan: Any) -> tuple[Any, set[str]]:
        """ComfyUI's own LoRA adapters, added through its ModelPatcher one block at a time.

        ``plan.key_map`` maps every LoRA key prefix we resolved (kohya, diffusers, PEFT with or
        without ``unet.``/``base_model.model.``, LyCORIS) to ``diffusion_model.<ldm key>``;
        ``comfy.lora.load_lora`` turns it into the same patch objects core LoraLoaderModelOnly
        makes, so weight management (low VRAM, unpatching) keeps working, and with every block
        weight at 1 the patches equal core's.
        """
        import comfy.lora

        patches = comfy.lora.load_lora(lora_state_dict, plan.key_map, log_missing=False)
        by_block: dict[str, dict[Any, Any]] = {}
        for key, patch in patches.items():
            name = key if isinstance(key, str) else key[0]
            by_block.setdefault(plan.group_of_key(name), {})[key] = patch
        weights = {group.block: group.weight for group in plan.groups}
        patched = model.clone()
        applied: set[str] = set()
        for block, group in by_block.items():
            weight = weights.get(block, plan.strength * plan.weights.get(block, 1.0))
            if weight == 0:
                continue
            for key in patched.add_patches(group, weight):
                applied.add(key if isinstance(key, str) else key[0])
        return patched, applied

    def bake_lora_patches(self, model: Any) -> Any:
        """A new ComfyUI MODEL whose UNet weights hold ``model``'s patches merged in.

        Weights come from ``get_key_patches`` (the unpatched originals even while a model is
        loaded and patched) and are merged with ``comfy.lora.calculate_weight``, as ComfyUI's own
        merge/save paths do; unpatched tensors are shared, not copied.
        """
        import comfy.lora
        import comfy.sd

        prefix = "diffusion_model."
        state: dict[str, torch.Tensor] = {}
        for key, entry in model.get_key_patches(prefix).items():
            weight, convert = entry[0]
            if len(entry) > 1:
                work = convert(weight.to(device=self.offload_device(), dtype=torch.float32, copy=True), inplace=True)
                weight = comfy.lora.calculate_weight(entry[1:], work, key).to(weight.dtype)
            state[key[len(prefix):]] = weight
        options: dict[str, Any] = {}
        get_dtype = getattr(model.model, "get_dtype", None)
        if callable(get_dtype):
            options["dtype"] = get_dtype()
        baked = comfy.sd.load_diffusion_model_state_dict(state, model_options=options)
        if baked is None:
            raise HostError("ComfyUI could not rebuild the model after baking the LoRA")
        return baked

    def accelerate_unet(self, model: Any, settings: Any) -> tuple[Any, Any]:
        """Through ComfyUI's own wrapper and callback mechanism (``comfy_capture``)."""
        from .comfy_capture import accelerate_comfy_model

        return accelerate_comfy_model(model, settings)

    # -- diffusion MODEL (unet_core.diffusion) -------------------------------------------
    def _apply_prediction(self, model: Any, prediction: str | None) -> Any:
        """Force eps / v prediction the way ComfyUI's ModelSamplingDiscrete node does."""
        if prediction not in ("epsilon", "v_prediction"):
            return model
        import comfy.model_base
        import comfy.model_sampling

        wanted = comfy.model_base.ModelType.V_PREDICTION if prediction == "v_prediction" \
            else comfy.model_base.ModelType.EPS
        if getattr(model.model, "model_type", None) == wanted:
            return model
        kind = comfy.model_sampling.V_PREDICTION if prediction == "v_prediction" else comfy.model_sampling.EPS

        class _Sampling(comfy.model_sampling.ModelSamplingDiscrete, kind):
            pass

        patched = model.clone()
        patched.add_object_patch("model_sampling", _Sampling(model.model.model_config))
        return patched

    def model_info(self, model: Any) -> dict[str, Any]:
        """Family, config and dtype of a ComfyUI MODEL, from ``model.model.model_config``."""
        from ...unet_core.checkpoints.spec import family_of
        from ...unet_core.diffusion.ldm_config import config_from_ldm_unet_config

        inner = getattr(model, "model", None)
        model_config = getattr(inner, "model_config", None)
        unet_config = getattr(model_config, "unet_config", None)
        if not isinstance(unet_config, dict):
            raise HostError(f"this MODEL ({type(inner).__name__}) has no UNet config: not an SD-family UNet")
        try:
            config = config_from_ldm_unet_config(unet_config)
        except (KeyError, ValueError, TypeError) as exc:
            raise HostError(f"this MODEL ({type(model_config).__name__}) is not an SD-family UNet: {exc}") from None
        model_type = getattr(getattr(inner, "model_type", None), "name", None)
        prediction = {"EPS": "epsilon", "V_PREDICTION": "v_prediction"}.get(model_type or "", model_type)
        try:
            weight_dtype = model.model_dtype()
        except Exception:  # noqa: BLE001 - informative only
            weight_dtype = None
        return {"family": family_of(config), "config": config, "prediction": prediction,
                "weight_dtype": weight_dtype, "comfy_config": type(model_config).__name__,
                "patched_keys": len(getattr(model, "patches", {})), "host": self.name}

    def swap_unet(self, model: Any, state_dict: dict[str, torch.Tensor], spec: Any) -> Any:
        """A clone of ``model`` whose UNet weights are ``state_dict``'s, through ComfyUI "set" patches.

        The "set" entries go first in each key's patch list, so the MODEL's own patches (a LoRA…)
        apply on top; ComfyUI's weight management (``comfy.lora.calculate_weight``, low-VRAM
        patching) applies them when the model loads. The input MODEL is not modified.
        """
        import uuid

        patched = model.clone()
        model_keys = set(patched.model.state_dict().keys())
        for k, tensor in state_dict.items():
            key = "diffusion_model." + k
            if key not in model_keys:
                raise HostError(f"Swap UNet: {k} is not a weight of this MODEL")
            patched.patches[key] = [(1.0, ("set", (tensor,)), 1.0, None, None)] + list(patched.patches.get(key, []))
        patched.patches_uuid = uuid.uuid4()
        return patched

    def unet_state_dict_for_saving(self, model: Any) -> dict[str, torch.Tensor]:
        """Bare-LDM UNet weights with the MODEL's patches merged (as ComfyUI's checkpoint save does)."""
        import comfy.model_management as mm

        mm.load_models_gpu([model], force_patch_weights=True)
        return {k: v.detach() for k, v in model.model.diffusion_model.state_dict().items()}
