"""What the checkpoint sniffer says about a pixel diffusion U-Net file (family "pixel_diffusion").

``fill_spec`` completes a :class:`~..checkpoints.spec.CheckpointSpec` from names and shapes
(plus a diffusers config.json or our metadata when present): layout, the inferred
:class:`PixelUNetConfig` (in ``spec.pixel_config``), sizes and notes. ``report_lines`` is
what Inspect UNet shows for it: resolution, conditional or not, learned sigma, the rules used.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from .pixel_infer import infer_config

FAMILY = "pixel_diffusion"
LAYOUT_NAMES = {"guided": "guided-diffusion (OpenAI UNetModel)", "diffusers": "diffusers UNet2DModel"}


def fill_spec(spec: Any, entries: Mapping[str, Any], metadata: Mapping[str, str],
              json_config: Mapping | None) -> Any:
    """``spec`` completed for a pixel diffusion U-Net (CheckpointError naming the file if uninferable)."""
    shapes = {k: tuple(e.shape) for k, e in entries.items()}
    config, layout, note = infer_config(shapes, metadata, json_config, where=spec.path)
    spec.kind, spec.family, spec.layout = "unet", FAMILY, layout
    spec.pixel_config, spec.config_source = config, note
    spec.unet_keys = len(entries)
    spec.unet_key_names = tuple(entries)
    spec.unet_params = sum(e.numel for e in entries.values())
    spec.unet_bytes = sum(e.nbytes for e in entries.values())
    spec.dtypes = dict(Counter(e.dtype for e in entries.values()))
    spec.prediction = config.prediction
    spec.prediction_source = "stored config" if "metadata" in note else "DDPM-family default (epsilon)"
    return spec


def report_lines(spec: Any) -> list[str]:
    """Inspect UNet's lines for a pixel diffusion file."""
    c = spec.pixel_config
    size = f"{c.image_size} x {c.image_size} px" if c.image_size else "unknown (not in the file)"
    cond = (f"class-conditional, {c.num_classes} classes" + (" (the last one is the null class: "
            "classifier-free guidance)" if c.null_class else "")) if c.num_classes else "unconditional"
    heads = f"{c.head_channels}-channel heads" if c.head_channels else f"{c.num_heads} head(s)"
    return [
        "kind: UNet only; family: pixel diffusion (DDPM family): load it with Load Pixel Diffusion U-Net, "
        "not with the SD loaders",
        f"layout: {LAYOUT_NAMES.get(spec.layout, spec.layout)}",
        f"resolution: {size}; {cond}; {c.in_channels} image channels"
        + ("; learned variance (sigma)" if c.learned_sigma else ""),
        f"UNet: {spec.unet_params / 1e6:.1f} M parameters in {spec.unet_keys} tensors",
        f"config ({spec.config_source}): widths {list(c.block_channels)}, {c.num_res_blocks} res blocks/level, "
        f"attention at levels {list(c.attention_levels)} with {heads}, scale-shift norm {c.scale_shift_norm}, "
        f"resblock up/down {c.resblock_updown}, {c.time_embedding} time embedding",
        f"sampling: {c.prediction} prediction, {c.beta_schedule} betas over {c.num_train_timesteps} steps",
    ]
