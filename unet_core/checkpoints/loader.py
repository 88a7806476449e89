"""Load a diffusion UNet from any supported file into the canonical bare-LDM state dict."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import CheckpointError
from .keymap import convert_diffusers_to_ldm, diffusers_to_ldm_keymap
from .readers import load_state_dict
from .sniff import sniff
from .spec import CheckpointSpec, require_unet

log = logging.getLogger(__name__)

# ComfyUI's rule for SD2 files without any other hint (comfy/supported_models.py, SD20.model_type).
SD2_VPRED_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_VPRED_STD = 0.09


def load_unet(path: str | Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], CheckpointSpec]:
    """(bare-LDM state dict, spec) of the UNet in ``path``.

    The file's other components (VAE, text encoders, EMA) are never turned into tensors; a
    diffusers layout is renamed (same tensor objects); a ``model.diffusion_model.`` prefix is
    stripped. Raises CheckpointError for files that hold no UNet, saying what they hold.
    """
    spec = require_unet(sniff(path))
    raw = load_state_dict(path, device=device, keys=spec.unet_key_names)
    n = len(spec.unet_prefix)
    bare = {k[n:]: v for k, v in raw.items()} if n else raw
    if spec.layout == "diffusers":
        sd = convert_diffusers_to_ldm(bare, spec.config)
    else:
        sd = bare
    expected = set(diffusers_to_ldm_keymap(spec.config).values())
    missing = expected - set(sd)
    if missing:
        raise CheckpointError(path, f"the UNet is incomplete: {len(missing)} of {len(expected)} tensors are missing "
                                    f"(e.g. {', '.join(sorted(missing)[:4])})")
    if spec.prediction == "unknown" and spec.family == "sd2" and SD2_VPRED_KEY in sd:
        std = float(sd[SD2_VPRED_KEY].float().std(unbiased=False))
        spec.prediction = "v_prediction" if std > SD2_VPRED_STD else "epsilon"
        spec.prediction_source = (f"weights: std of {SD2_VPRED_KEY} = {std:.3f} "
                                  f"{'>' if std > SD2_VPRED_STD else '<='} {SD2_VPRED_STD} (ComfyUI's SD2 rule)")
    log.info("loaded %s: %s UNet, %d tensors, layout %s", Path(path).name, spec.family or "custom", len(sd),
             spec.layout)
    return sd, spec
