"""Skip-gate nodes: patch a MODEL's skip connections; turn recorded gate maps into a MASK batch."""

from __future__ import annotations

import logging
from typing import Any

from ..unet_core.errors import GateError
from ..unet_core.gates.apply import apply_skip_gate
from ..unet_core.gates.levels import parse_levels
from ..unet_core.gates.maps import COMBINES, PASS_CODES, SIZES, maps_to_mask
from ..unet_core.gates.skip_gate import PASSES
from .choices import model_files
from .host import get_host

log = logging.getLogger(__name__)

GATE_FOLDER = "unet_gates"
NO_WEIGHTS = "none (parameter-free)"


def _model_layout(model: Any) -> tuple[str, Any]:
    """``(family, config)`` of a MODEL, from the host's ``model_info`` (either host)."""
    info = get_host().model_info(model)
    family, config = info.get("family"), info.get("config")
    if config is None:
        raise GateError(f"UNet Skip Attention Gate: the MODEL ({family or 'unknown family'}) is not an "
                        f"SD-family UNet with skip connections")
    return str(family or "unknown"), config


class UNetLabSkipAttentionGate:
    DESCRIPTION = ("Attention gates on the UNet's skip connections: each decoder block rescales its skip "
                   "features per pixel by a gate computed from the decoder features and the skip itself "
                   "(parameter-free by default, or trained AdditiveAttentionGate weights). Strength 0 is the "
                   "exact identity. Returns a patched clone; composes with FreeU (patches run in the order "
                   "added) and LoRA (weight patches are independent).")
    CATEGORY = "UNet Lab/gates"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL", "SKIP_GATE_MAPS", "STRING")
    RETURN_NAMES = ("model", "gate_maps", "report")
    OUTPUT_TOOLTIPS = ("The model with the skip gate patched in (a clone; the input MODEL is unchanged).",
                       "The gate maps recorded during the next sampling run; feed to Skip Gate Maps.",
                       "Which output blocks are gated: level, resolution, channels and strength.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model."}),
                "strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 2.0, "step": 0.01,
                                       "tooltip": "0 = exact identity; 1 = skip multiplied by the gate map."}),
                "levels": ("STRING", {"default": "all",
                                      "tooltip": "Which decoder levels to gate: 'all', level indices "
                                                 "(0 = finest) or resolutions of the image, e.g. '1/8, 1/16'."}),
                "level_strengths": ("STRING", {"default": "",
                                               "tooltip": "Per-level multipliers: '1/8=1, 1/32=0.5', or one value "
                                                          "per level (finest first). Empty = 1 everywhere."}),
                "floor": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Lowest gate value: alpha' = floor + (1 - floor) * alpha."}),
                "apply_to": (list(PASSES), {"default": "both",
                                            "tooltip": "Act on the cond pass, the uncond pass, or both."}),
            },
            "optional": {
                "sharpness": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 20.0, "step": 0.05,
                                        "tooltip": "Slope of the parameter-free gate's sigmoid."}),
                "gate_weights": ([NO_WEIGHTS] + model_files(GATE_FOLDER),
                                 {"default": NO_WEIGHTS,
                                  "tooltip": "Trained gate weights from models/unet_gates (format: docs/gates.md)."}),
                "record_maps": ("BOOLEAN", {"default": True,
                                            "tooltip": "Keep the last step's gate maps for Skip Gate Maps."}),
            },
        }

    def patch(self, model: Any, strength: float, levels: str, level_strengths: str, floor: float, apply_to: str,
              sharpness: float = 1.0, gate_weights: str = NO_WEIGHTS, record_maps: bool = True):
        family, config = _model_layout(model)
        weights = None
        if gate_weights and gate_weights != NO_WEIGHTS:
            weights = get_host().resolve(GATE_FOLDER, gate_weights)
        patched, recorder, report = apply_skip_gate(model, config, family, strength, levels, level_strengths,
                                                    floor, sharpness, apply_to, weights, record_maps)
        return (patched, recorder, report)


class UNetLabSkipGateMaps:
    DESCRIPTION = ("The gate maps alpha' (in [floor, 1]) that a UNet Skip Attention Gate recorded in the last "
                   "model call of its sampling run, as a MASK batch. Connect the sampler's LATENT so this node "
                   "runs after sampling.")
    CATEGORY = "UNet Lab/gates"
    FUNCTION = "maps"
    RETURN_TYPES = ("MASK", "STRING")
    RETURN_NAMES = ("masks", "labels")
    OUTPUT_TOOLTIPS = ("Gate maps [N, H, W] in [0, 1]: per block (blocks x rows) or their mean (rows).",
                       "One line per mask saying which block, pass and batch row it shows.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "gate_maps": ("SKIP_GATE_MAPS", {"tooltip": "The gate_maps output of UNet Skip Attention Gate."}),
                "samples": ("LATENT", {"tooltip": "The sampler's output: orders this node after sampling."}),
                "levels": ("STRING", {"default": "all", "tooltip": "Levels to show: 'all', indices or '1/8, 1/16'."}),
                "passes": (list(PASS_CODES), {"default": "cond", "tooltip": "Maps of the cond, uncond or both passes."}),
                "combine": (list(COMBINES), {"default": "per block",
                                             "tooltip": "One mask per block and row, or the mean over blocks."}),
                "size": (list(SIZES), {"default": "image", "tooltip": "Resize to the image size (8x latent) or the latent size."}),
            }
        }

    def maps(self, gate_maps: Any, samples: Any, levels: str, passes: str, combine: str, size: str):
        chosen = None
        if gate_maps is not None and (levels or "all").strip().lower() not in ("", "all", "*"):
            chosen = parse_levels(levels, gate_maps.config)
        masks, labels = maps_to_mask(gate_maps, chosen, passes, combine, size)
        return (masks, "\n".join(labels))


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "UNetLabSkipAttentionGate": UNetLabSkipAttentionGate,
    "UNetLabSkipGateMaps": UNetLabSkipGateMaps,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "UNetLabSkipAttentionGate": "UNet Skip Attention Gate",
    "UNetLabSkipGateMaps": "Skip Gate Maps",
}
