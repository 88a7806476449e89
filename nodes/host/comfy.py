"""The ComfyUI host. Imports ComfyUI's modules lazily, inside each method.

Only this module may import ``comfy``, ``folder_paths``,
``comfy.model_management`` or ``comfy.utils`` (DESIGN.md).
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
               "loras": "loras", "unet_segmentation": "unet_segmentation"}


def _folder_paths() -> Any:
    import folder_paths

    if "unet_segmentation" not in folder_paths.folder_names_and_paths:
        path = os.path.join(folder_paths.models_dir, "unet_segmentation")
        folder_paths.folder_names_and_paths["unet_segmentation"] = ([path], set(MODEL_EXTENSIONS))
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
        return model
