"""Accelerate UNet inside ComfyUI: the accelerator as a ``WrappersMP.DIFFUSION_MODEL`` wrapper.

Installed through ``comfy.patcher_extension`` on a clone of the ModelPatcher, never by patching
ComfyUI's code. Two things only ComfyUI knows are handed to the accelerator: whether the model is
loaded partially (low-VRAM mode streams weights per layer, which a graph cannot follow: eager), and
when the model is unloaded (``CallbacksMP.ON_DETACH`` with ``unpatch_all``: the graphs are dropped,
giving back their memory; the next run after a reload captures anew, and weights reloaded at other
addresses would have keyed new graphs anyway). ComfyUI's ``load_models_gpu`` also detaches, without
``unpatch_all``, every loaded clone of a model it is about to load, the model itself included, on
every sampling run: its weights stay where they are, so the graphs are kept (dropping them there
would re-capture on every queued prompt). Imports ComfyUI lazily.
"""

from __future__ import annotations

from typing import Any

from ...unet_core.acceleration.accelerator import AccelerationSettings, Accelerator
from ...unet_core.acceleration.install import WRAPPER_KEY, install_accelerator


def _low_vram_check(base_model: Any):
    """A precheck: why the model must run eagerly now, from ComfyUI's load state."""

    def precheck(_module: Any) -> str | None:
        if getattr(base_model, "model_lowvram", False):
            return ("ComfyUI loaded the model partially (low VRAM): weights move per layer during the step, "
                    "which a captured graph cannot follow")
        return None

    return precheck


def _release_on_unload(accelerator: Accelerator):
    """The ``ON_DETACH`` callback: drop the graphs when ComfyUI unloads the model (``unpatch_all``),
    keep them when it only re-attaches it with its weights in place."""

    def on_detach(_patcher: Any, unpatch_all: bool = True) -> None:
        if unpatch_all:
            accelerator.release()

    return on_detach


def accelerate_comfy_model(model: Any, settings: AccelerationSettings) -> tuple[Any, Accelerator]:
    """A clone of the ComfyUI MODEL running through a new accelerator, and that accelerator."""
    import comfy.patcher_extension as extension

    accelerator = Accelerator(settings, precheck=_low_vram_check(getattr(model, "model", None)))
    clone = install_accelerator(model, accelerator, extension.WrappersMP.DIFFUSION_MODEL)
    detach = extension.CallbacksMP.ON_DETACH
    clone.remove_callbacks_with_key(detach, WRAPPER_KEY)
    clone.add_callback_with_key(detach, WRAPPER_KEY, _release_on_unload(accelerator))
    return clone, accelerator
