"""Load a pixel diffusion U-Net file (safetensors, weights-only pickle, diffusers folder) into a model.

The file is sniffed first (header only for safetensors), so an SD UNet, a LoRA or anything
else is refused by name before tensors are read; pickles are only ever opened with
``torch.load(weights_only=True)`` (``checkpoints.readers``). diffusers names are mapped to
the canonical layout; every tensor the model needs must be present with its shape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints.pixel_sniff import FAMILY
from ..checkpoints.readers import DIFFUSERS_WEIGHT_NAMES, load_state_dict
from ..checkpoints.sniff import sniff
from ..checkpoints.spec import FAMILY_NAMES, CheckpointSpec
from ..errors import CheckpointError
from ..pixel_unet_config import PixelUNetConfig
from .keymap import diffusers_to_canonical
from .model import PixelUNet

log = logging.getLogger(__name__)


@dataclass
class PixelModel:
    """A loaded pixel diffusion U-Net and what is known about it."""

    unet: PixelUNet
    config: PixelUNetConfig
    source: str = ""        # the file or folder it came from
    info: str = ""          # the readable report


def require_pixel(spec: CheckpointSpec) -> CheckpointSpec:
    """``spec`` if it is a pixel diffusion U-Net, else a CheckpointError saying what the file is instead."""
    if spec.family == FAMILY:
        return spec
    if spec.is_unet:
        fam = FAMILY_NAMES.get(spec.family or "", "an SD-style latent UNet")
        raise CheckpointError(spec.path, f"this is a {fam} UNet (latent diffusion with cross-attention), not a "
                                         f"pixel diffusion U-Net: load it with Load UNet (or ComfyUI's Load "
                                         f"Diffusion Model)")
    what = {"lora": "a LoRA", "vae": "a VAE", "text_encoder": "a text encoder"}.get(spec.kind, "no U-Net we know")
    sample = ", ".join(spec.sample_keys[:4])
    raise CheckpointError(spec.path, f"this file holds {what} ({spec.total_keys} tensors, e.g. {sample}), not a "
                                     f"pixel diffusion U-Net (diffusers UNet2DModel or guided-diffusion UNetModel)")


def canonical_state_dict(path: str | Path, spec: CheckpointSpec, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The file's tensors under canonical names (diffusers files renamed, q/k/v fused)."""
    raw = load_state_dict(path, device=device)
    return diffusers_to_canonical(raw, spec.pixel_config) if spec.layout == "diffusers" else raw


def build(config: PixelUNetConfig, state: dict[str, torch.Tensor], where: str | Path | None = None,
          dtype: torch.dtype | None = None) -> PixelUNet:
    """A PixelUNet holding ``state`` (every tensor required, shapes checked), eval mode."""
    with torch.device("meta"):
        unet = PixelUNet(config)
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or wrong:
        detail = (f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})" if missing else
                  f"{len(wrong)} tensors of the wrong shape (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} "
                  f"instead of {expected[wrong[0]]})")
        raise CheckpointError(where, f"the weights do not fit the inferred pixel diffusion config: {detail}")
    cast = {k: (state[k].to(dtype) if dtype is not None and state[k].is_floating_point() else state[k])
            for k in expected}
    unet.load_state_dict(cast, strict=True, assign=True)
    return unet.eval().requires_grad_(False)


def load_pixel_unet(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> PixelModel:
    """The pixel diffusion U-Net of a file or diffusers folder (CheckpointError naming it otherwise)."""
    from ..checkpoints.report import describe

    path = Path(path)
    if path.name in DIFFUSERS_WEIGHT_NAMES and (path.parent / "config.json").is_file():
        path = path.parent  # a diffusers UNet folder's weight file: read it with its config.json
    spec = require_pixel(sniff(path))
    unet = build(spec.pixel_config, canonical_state_dict(path, spec, device), path, dtype)
    log.info("loaded %s: pixel diffusion U-Net (%s layout, %.1f M params)", Path(path).name, spec.layout,
             spec.unet_params / 1e6)
    return PixelModel(unet, spec.pixel_config, str(path), describe(spec))
