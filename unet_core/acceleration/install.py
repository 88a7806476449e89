"""Put an :class:`~.accelerator.Accelerator` on a MODEL as its ``"diffusion_model"`` wrapper.

Works on any patcher with ComfyUI's wrapper API (``clone``, ``add_wrapper_with_key``,
``remove_wrappers_with_key``): ComfyUI's ModelPatcher and the standalone ``UNetPatcher``. The
input MODEL is not modified; a MODEL accelerated twice keeps only the newer accelerator.
"""

from __future__ import annotations

from typing import Any

from ..diffusion.wrappers import DIFFUSION_MODEL
from ..errors import InputError
from .accelerator import Accelerator

WRAPPER_KEY = "unet_lab.accelerate_unet"


def install_accelerator(model: Any, accelerator: Accelerator, wrapper_type: str = DIFFUSION_MODEL) -> Any:
    """A clone of ``model`` whose diffusion-model forward runs through ``accelerator``."""
    if not all(hasattr(model, name) for name in ("clone", "add_wrapper_with_key", "remove_wrappers_with_key")):
        raise InputError(f"Accelerate UNet: this MODEL ({type(model).__name__}) has no wrapper API")
    clone = model.clone()
    clone.remove_wrappers_with_key(wrapper_type, WRAPPER_KEY)
    clone.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, accelerator)
    return clone
