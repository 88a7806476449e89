"""The host interface: everything a node needs that differs between hosts.

A node never asks "am I in ComfyUI?"; it calls ``get_host()`` and uses this
interface. Two implementations exist: ``ComfyHost`` (inside a running ComfyUI,
imports ComfyUI lazily) and ``StandaloneHost`` (stub executor, CLI, tests).

The interface has three concerns, in this order: model folders (list, resolve, save
locations, the input/output/temp folders), runtime (device, memory, progress,
interruption) and model operations (build, describe, swap, LoRA patches, weights for
saving). Each implementation is one class, because its concerns share its state (the
models root, the device); ``docs/architecture.md`` describes the seam.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from ...unet_core.progress import ProgressCallback

# Our model folder names; the first is the canonical one, the rest are legacy aliases.
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "diffusion_models": ("diffusion_models", "unet"),
    "checkpoints": ("checkpoints",),
    "loras": ("loras",),
    "unet_segmentation": ("unet_segmentation",),
    "unet_gates": ("unet_gates",),
}

# File name endings each folder lists (ComfyUI's supported_pt_extensions plus folders' own).
MODEL_EXTENSIONS: tuple[str, ...] = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".pkl")


class Host(ABC):
    """What a node may ask of whoever runs it."""

    name: str = "host"

    # -- model folders -------------------------------------------------------------
    @abstractmethod
    def list_files(self, folder: str) -> list[str]:
        """Relative names of the model files in ``folder`` (one of MODEL_FOLDERS), sorted."""

    @abstractmethod
    def resolve(self, folder: str, name: str) -> Path:
        """The full path of ``name`` in ``folder``; HostError if absent or outside the folder."""

    @abstractmethod
    def save_directory(self, folder: str) -> Path:
        """Where new files for ``folder`` are written (created on demand)."""

    @abstractmethod
    def output_directory(self) -> Path:
        """The output folder (images, reports)."""

    def shared_output_directory(self) -> Path:
        """The output folder for files each rank writes its own share of (under torchrun).

        Same as ``output_directory()`` in one process; on ranks other than 0 of a torchrun job,
        ``output_directory()`` is a scratch folder (only rank 0 saves), but this is the real one.
        """
        return self.output_directory()

    @abstractmethod
    def input_directory(self) -> Path:
        """The input folder (images LoadImage lists)."""

    @abstractmethod
    def temp_directory(self) -> Path:
        """The temporary folder (PreviewImage writes there)."""

    # -- device and memory ---------------------------------------------------------
    @abstractmethod
    def device(self) -> torch.device:
        """The device models run on."""

    @abstractmethod
    def offload_device(self) -> torch.device:
        """Where models rest when not running."""

    @abstractmethod
    def free_memory(self, device: torch.device | None = None) -> int:
        """Free bytes on ``device`` (default: ``self.device()``)."""

    @abstractmethod
    def release_memory(self) -> None:
        """Give cached accelerator memory back after heavy work."""

    # -- progress ------------------------------------------------------------------
    @abstractmethod
    def progress(self, total: int, node_id: str | None = None) -> ProgressCallback:
        """A callback ``(done, total, message)`` that shows progress to the user."""

    def preview_progress(self, total: int, node_id: str | None = None) -> Any:
        """A callback ``(done, total, image)`` showing progress and a PIL preview image (or None).

        Default: the plain progress reporter, the preview dropped (standalone hosts show no images).
        """
        report = self.progress(total, node_id)
        return lambda done, total_now, image=None: report(done, total_now)

    def check_interrupted(self) -> None:  # noqa: B027 - optional hook: a host without interruption keeps it
        """Raise if the user asked to stop; standalone runs are never interrupted."""

    # -- models --------------------------------------------------------------------
    @abstractmethod
    def model_from_unet_state_dict(self, state_dict: dict[str, torch.Tensor], spec: Any,
                                   weight_dtype: torch.dtype | None = None) -> Any:
        """A MODEL built from a canonical (bare LDM) UNet state dict and its sniffed spec."""

    @abstractmethod
    def model_info(self, model: Any) -> dict[str, Any]:
        """Family, config and dtype of a MODEL, whichever host made it."""

    @abstractmethod
    def swap_unet(self, model: Any, state_dict: dict[str, torch.Tensor], spec: Any) -> Any:
        """A clone of ``model`` whose UNet weights are ``state_dict``'s; options and patches kept."""

    @abstractmethod
    def unet_state_dict_for_saving(self, model: Any) -> dict[str, torch.Tensor]:
        """The canonical (bare LDM) UNet weights of ``model`` with its weight patches merged."""

    # -- LoRA patches (unet_core.lora) ------------------------------------------------
    def unet_weight_shapes(self, model: Any) -> dict[str, tuple[int, ...]]:
        """Bare LDM parameter name -> shape for a MODEL's UNet (shapes only; no copies)."""
        inner = getattr(model, "model", model)
        state = inner.state_dict()
        prefix = "diffusion_model."
        shapes = {k[len(prefix):]: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}
        return shapes or {k: tuple(v.shape) for k, v in state.items()}

    def add_lora_patches(self, model: Any, lora_state_dict: dict[str, torch.Tensor],
                         plan: Any) -> tuple[Any, set[str]]:
        """A clone of ``model`` with a LoRA plan's patches added, one ``add_patches`` call per block.

        ``plan`` is a ``unet_core.lora.plan.LoraPlan``; each group's strength is
        ``strength * block weight``. The input MODEL is never modified. Default: the plan's own
        patch objects on a patcher with ComfyUI's ``clone``/``add_patches`` API (standalone).
        Returns the clone and the model keys that took a patch.
        """
        patched = model.clone()
        applied: set[str] = set()
        for group in plan.groups:
            if group.weight == 0 or not group.patches:
                continue
            applied.update(patched.add_patches(group.patches, group.weight))
        return patched, applied

    @abstractmethod
    def bake_lora_patches(self, model: Any) -> Any:
        """A new MODEL whose UNet weights hold ``model``'s weight patches merged in."""

    # -- acceleration (unet_core.acceleration) -----------------------------------------
    def accelerate_unet(self, model: Any, settings: Any) -> tuple[Any, Any]:
        """A clone of ``model`` whose UNet forward runs through a new ``Accelerator`` (CUDA graphs),
        and that accelerator. Default: the patcher's wrapper API (the standalone patcher)."""
        from ...unet_core.acceleration.accelerator import Accelerator
        from ...unet_core.acceleration.install import install_accelerator

        accelerator = Accelerator(settings)
        return install_accelerator(model, accelerator), accelerator
