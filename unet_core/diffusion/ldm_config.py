"""Convert an LDM/ComfyUI ``unet_config`` dict (model_channels, channel_mult…) into a UNetConfig.

ComfyUI describes a loaded UNet with the LDM constructor arguments
(``model.model.model_config.unet_config``); patch nodes want our diffusers-named config.
Pure dict parsing: no ComfyUI import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..unet_config import UNetConfig


def _per_level(value: Any, levels: int, res_blocks: int) -> list[int]:
    if isinstance(value, int):
        return [value] * levels
    value = list(value)
    if len(value) == levels:
        return [int(v) for v in value]
    if len(value) == levels * res_blocks:  # ComfyUI: one entry per input res block
        return [int(value[i * res_blocks]) for i in range(levels)]
    raise ValueError(f"cannot read per-level values from {value!r}")


def config_from_ldm_unet_config(d: Mapping[str, Any]) -> UNetConfig:
    """UNetConfig for an LDM-style ``unet_config`` (as ComfyUI's model detection writes it)."""
    mc = int(d["model_channels"])
    mult = [int(m) for m in d["channel_mult"]]
    levels = len(mult)
    nrb = d.get("num_res_blocks", 2)
    res_blocks = int(nrb if isinstance(nrb, int) else list(nrb)[0])
    channels = tuple(mc * m for m in mult)
    depths = _per_level(d.get("transformer_depth", 1), levels, res_blocks)
    head_channels = int(d.get("num_head_channels", -1) or -1)
    num_heads = int(d.get("num_heads", -1) or -1)
    if head_channels > 0:
        heads = tuple(max(1, c // head_channels) for c in channels)
    else:
        heads = tuple([num_heads if num_heads > 0 else 8] * levels)
    mid = d.get("transformer_depth_middle")
    adm = d.get("adm_in_channels")
    ctx = d.get("context_dim", 768)
    mid_layers = int(mid) if isinstance(mid, int) and mid >= 0 else None
    if mid_layers == max(depths[-1], 1):
        mid_layers = None  # the default rule gives it
    return UNetConfig(
        in_channels=int(d.get("in_channels", 4)), out_channels=int(d.get("out_channels", 4)),
        block_out_channels=channels, layers_per_block=res_blocks,
        transformer_layers_per_block=tuple(depths), num_attention_heads=heads,
        cross_attention_dim=int(ctx) if ctx is not None else 768,
        use_linear_projection=bool(d.get("use_linear_in_transformer", False)),
        addition_embed_type="text_time" if adm else None,
        projection_class_embeddings_input_dim=int(adm) if adm else None,
        mid_block_transformer_layers=mid_layers,
    )
