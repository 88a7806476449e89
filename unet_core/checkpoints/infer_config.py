"""Derive a :class:`UNetConfig` from parameter shapes (LDM or diffusers names) or a diffusers config.json.

Shapes fix everything that has weights: input/output channels, channels per level,
levels, ResNet blocks per level, transformer depth per level (0 where a level has no
attention) and in the middle block, context width, linear vs 1x1-conv ``proj_in``, and the
ADM (``label_emb``) input width. Three fields have no weights and follow rules:

* heads: a 1x1-conv ``proj_in`` (the SD1 family) gets 8 heads at every level; a linear
  ``proj_in`` (SD2, SDXL) gets 64-channel heads (``channels // 64``). For reduced configs
  whose channels do not divide so, the rule falls back to 1 head. A config stored in the
  file's metadata (``unet_lab.config``, written by our writer) or a diffusers config.json
  overrides this.
* ``norm_num_groups``: 32 (every SD-family model), unless overridden the same way.
* ``addition_time_embed_dim``: 256 (SDXL's), unless overridden.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError
from ..unet_config import UNetConfig

CONFIG_METADATA_KEY = "unet_lab.config"
# Fields that shapes decide; a metadata config that disagrees on any of them is ignored.
SHAPE_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block",
                "transformer_layers_per_block", "cross_attention_dim", "use_linear_projection",
                "addition_embed_type", "projection_class_embeddings_input_dim")

Shapes = Mapping[str, tuple[int, ...]]


def default_heads(channels: tuple[int, ...], linear_projection: bool) -> tuple[int, ...]:
    """The head-count rule described in the module docstring."""
    if not linear_projection:
        return tuple(8 if c % 8 == 0 else 1 for c in channels)
    return tuple(c // 64 if c % 64 == 0 and c >= 64 else 1 for c in channels)


def _indices(shapes: Shapes, pattern: str) -> set[int]:
    rx = re.compile(pattern)
    out = set()
    for k in shapes:
        m = rx.match(k)
        if m:
            out.add(int(m.group(1)))
    return out


_TRANSFORMER_BLOCK = re.compile(r"(.+?)\.transformer_blocks\.(\d+)\.")


def _depths(shapes: Shapes) -> dict[str, int]:
    """Transformer depth of every module that holds ``transformer_blocks`` (one pass over the keys)."""
    found: dict[str, set[int]] = {}
    for k in shapes:
        m = _TRANSFORMER_BLOCK.match(k)
        if m:
            found.setdefault(m.group(1), set()).add(int(m.group(2)))
    return {module: len(blocks) for module, blocks in found.items()}


def _need(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(None, f"cannot infer the UNet config: {key!r} is missing ({what})")
    return tuple(shapes[key])


def _finish(in_ch: int, out_ch: int, chans: list[int], L: int, depths: list[int], mid_depth: int,
            context: int, linear: bool, adm: int | None) -> UNetConfig:
    depths_t = tuple(depths)
    cfg = UNetConfig(
        in_channels=in_ch, out_channels=out_ch, block_out_channels=tuple(chans), layers_per_block=L,
        transformer_layers_per_block=depths_t, num_attention_heads=default_heads(tuple(chans), linear),
        cross_attention_dim=context, use_linear_projection=linear,
        addition_embed_type="text_time" if adm else None,
        projection_class_embeddings_input_dim=adm,
    )
    if cfg.mid_transformer_layers != mid_depth:
        cfg = cfg.with_(mid_block_transformer_layers=mid_depth)
    return cfg


def _attention_kind(shapes: Shapes) -> tuple[int, bool]:
    """(cross-attention context width, linear proj_in?) from the first attention found; both
    layouts spell these the same (``attn2.to_k``, ``proj_in``). No attention: (768, conv)."""
    context = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), 768)
    linear = next((len(s) == 2 for k, s in shapes.items() if k.endswith(".proj_in.weight")), False)
    return context, linear


def config_from_ldm_shapes(shapes: Shapes) -> UNetConfig:
    """Config of a bare-LDM UNet from its parameter shapes (name -> shape)."""
    conv_in = _need(shapes, "input_blocks.0.0.weight", "the first convolution")
    out_conv = _need(shapes, "out.2.weight", "the last convolution")
    n_in = len(_indices(shapes, r"input_blocks\.(\d+)\."))
    downs = sorted(_indices(shapes, r"input_blocks\.(\d+)\.0\.op\.weight"))
    levels = len(downs) + 1
    if n_in % levels:
        raise CheckpointError(None, f"cannot infer the UNet config: {n_in} input blocks do not split into "
                                    f"{levels} levels")
    L = n_in // levels - 1
    if L < 1 or (downs and downs[0] != 1 + L):
        raise CheckpointError(None, "cannot infer the UNet config: the input blocks are not laid out as "
                                    "resnets + downsample per level")
    chans, depths, depth_of = [], [], _depths(shapes)
    for i in range(levels):
        first = 1 + i * (L + 1)
        chans.append(_need(shapes, f"input_blocks.{first}.0.emb_layers.1.weight", "a ResBlock")[0])
        depths.append(depth_of.get(f"input_blocks.{first}.1", 0))
    mid_depth = depth_of.get("middle_block.1", 0)
    if "middle_block.1.in_layers.0.weight" in shapes:
        raise CheckpointError(None, "unsupported UNet: its middle block has no attention")
    adm = shapes["label_emb.0.0.weight"][1] if "label_emb.0.0.weight" in shapes else None
    return _finish(conv_in[1], out_conv[0], chans, L, depths, mid_depth, *_attention_kind(shapes), adm)


def config_from_diffusers_shapes(shapes: Shapes) -> UNetConfig:
    """Config of a bare diffusers UNet2DConditionModel from its parameter shapes."""
    conv_in = _need(shapes, "conv_in.weight", "the first convolution")
    out_conv = _need(shapes, "conv_out.weight", "the last convolution")
    levels = len(_indices(shapes, r"down_blocks\.(\d+)\."))
    L = len(_indices(shapes, r"down_blocks\.0\.resnets\.(\d+)\."))
    if levels < 1 or L < 1:
        raise CheckpointError(None, "cannot infer the UNet config: no down blocks with ResNets")
    chans = [_need(shapes, f"down_blocks.{i}.resnets.0.conv1.weight", "a ResNet")[0] for i in range(levels)]
    depth_of = _depths(shapes)
    depths = [depth_of.get(f"down_blocks.{i}.attentions.0", 0) for i in range(levels)]
    mid_depth = depth_of.get("mid_block.attentions.0", 0)
    adm = shapes["add_embedding.linear_1.weight"][1] if "add_embedding.linear_1.weight" in shapes else None
    return _finish(conv_in[1], out_conv[0], chans, L, depths, mid_depth, *_attention_kind(shapes), adm)


def _per_level(value: Any, levels: int) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != levels:
            raise ValueError(f"{len(value)} entries for {levels} levels")
        return tuple(value)
    return (value,) * levels


def config_from_diffusers_json(data: Mapping[str, Any]) -> UNetConfig:
    """Config from a diffusers UNet2DConditionModel ``config.json`` dict."""
    try:
        chans = tuple(int(c) for c in data.get("block_out_channels", (320, 640, 1280, 1280)))
        levels = len(chans)
        down = data.get("down_block_types") or ["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"]
        layers = _per_level(data.get("transformer_layers_per_block", 1), levels)
        depths = tuple(int(n) if "CrossAttn" in t else 0 for n, t in zip(layers, down, strict=False))
        heads = data.get("num_attention_heads") or data.get("attention_head_dim", 8)
        heads = tuple(int(h) for h in _per_level(heads, levels))
        ctx = data.get("cross_attention_dim", 768)
        ctx = int(ctx[0] if isinstance(ctx, (list, tuple)) else ctx)
        mid_type = data.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        if mid_type not in (None, "UNetMidBlock2DCrossAttn"):
            raise ValueError(f"mid_block_type {mid_type!r} is not supported")
        if mid_type is None:
            raise ValueError("a UNet without a middle block is not supported")
        mid = data.get("transformer_layers_per_mid_block") or layers[-1]
        add = data.get("addition_embed_type")
        if add not in (None, "text_time"):
            raise ValueError(f"addition_embed_type {add!r} is not supported")
        if data.get("class_embed_type") or data.get("encoder_hid_dim") or data.get("time_cond_proj_dim"):
            raise ValueError("class/encoder-hidden/time-cond embeddings are not supported")
        lpb = data.get("layers_per_block", 2)
        if isinstance(lpb, (list, tuple)):
            if len(set(lpb)) != 1:
                raise ValueError("different layers_per_block per level are not supported")
            lpb = lpb[0]
        cfg = UNetConfig(
            in_channels=int(data.get("in_channels", 4)), out_channels=int(data.get("out_channels", 4)),
            block_out_channels=chans, layers_per_block=int(lpb),
            transformer_layers_per_block=depths, num_attention_heads=heads, cross_attention_dim=ctx,
            use_linear_projection=bool(data.get("use_linear_projection", False)),
            norm_num_groups=int(data.get("norm_num_groups", 32)), addition_embed_type=add,
            addition_time_embed_dim=int(data.get("addition_time_embed_dim") or 256),
            projection_class_embeddings_input_dim=(int(data["projection_class_embeddings_input_dim"])
                                                   if add and data.get("projection_class_embeddings_input_dim")
                                                   else None),
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(None, f"the diffusers config.json cannot be used: {exc}") from None
    if cfg.mid_transformer_layers != int(mid):
        cfg = cfg.with_(mid_block_transformer_layers=int(mid))
    return cfg


def config_to_diffusers_json(cfg: UNetConfig) -> dict[str, Any]:
    """A diffusers ``config.json`` dict for ``cfg`` (what our diffusers writer stores)."""
    depths = cfg.transformer_layers_per_block
    # diffusers takes the middle block's depth from the last entry, which a level without
    # attention does not use otherwise.
    layers = [d if d else 1 for d in depths]
    if not depths[-1]:
        layers[-1] = cfg.mid_transformer_layers
    data: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "block_out_channels": list(cfg.block_out_channels), "layers_per_block": cfg.layers_per_block,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "transformer_layers_per_block": layers,
        "attention_head_dim": list(cfg.num_attention_heads),
        "cross_attention_dim": cfg.cross_attention_dim, "use_linear_projection": cfg.use_linear_projection,
        "norm_num_groups": cfg.norm_num_groups, "mid_block_type": "UNetMidBlock2DCrossAttn",
    }
    if cfg.mid_transformer_layers != layers[-1]:
        data["transformer_layers_per_mid_block"] = cfg.mid_transformer_layers
    if cfg.addition_embed_type:
        data.update(addition_embed_type=cfg.addition_embed_type, addition_time_embed_dim=cfg.addition_time_embed_dim,
                    projection_class_embeddings_input_dim=cfg.projection_class_embeddings_input_dim)
    return data


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _unusable(config: UNetConfig) -> str | None:
    """Why a stored config cannot build a model (fields shapes do not check: heads, norm groups), or None."""
    heads = config.num_attention_heads
    channels = config.block_out_channels
    if not isinstance(heads, tuple) or len(heads) != len(channels) or not all(map(_positive_int, heads)):
        return f"num_attention_heads {heads!r} is not one positive integer per level"
    if not all(isinstance(c, int) and c % h == 0 for c, h in zip(channels, heads, strict=True)):
        return f"num_attention_heads {list(heads)} do not divide block_out_channels {list(channels)}"
    groups = config.norm_num_groups
    if not _positive_int(groups) or not all(isinstance(c, int) and c % groups == 0 for c in channels):
        return f"norm_num_groups {groups!r} does not divide every level's channels"
    if config.addition_embed_type and not _positive_int(config.addition_time_embed_dim):
        return f"addition_time_embed_dim {config.addition_time_embed_dim!r} is not a positive integer"
    return None


def config_from_metadata(metadata: Mapping[str, str], inferred: UNetConfig) -> tuple[UNetConfig, str | None]:
    """``inferred`` overridden by a config stored in metadata, when it agrees on every shape field.

    Returns (config, note): note says why the stored config was ignored, or None.
    """
    raw = metadata.get(CONFIG_METADATA_KEY)
    if not raw:
        return inferred, None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        stored = UNetConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        return inferred, f"the stored config ({CONFIG_METADATA_KEY}) is unreadable ({exc}); shapes used"
    problem = _unusable(stored)
    if problem:
        return inferred, f"the stored config ({CONFIG_METADATA_KEY}) is not usable ({problem}); shapes used"
    clash = [f for f in SHAPE_FIELDS if getattr(stored, f) != getattr(inferred, f)]
    if stored.mid_transformer_layers != inferred.mid_transformer_layers:
        clash.append("mid_block_transformer_layers")
    if clash:
        return inferred, f"the stored config disagrees with the weights on {', '.join(clash)}; shapes used"
    return stored, None
