"""Key maps between diffusers' ``UNet2DModel`` and our canonical (guided-diffusion) layout.

Module prefixes map one to one (``down_blocks.1.attentions.0`` <-> ``input_blocks.4.1``) and
ResNet parameters are renamed as for the SD UNets. The one change beyond renaming is the
attention projection: diffusers holds separate ``to_q``/``to_k``/``to_v`` linear layers
``[C, C]`` (``query``/``key``/``value`` in files saved before diffusers 0.14, ``proj_attn`` for
``to_out.0``), guided-diffusion one fused conv ``qkv [3C, C, 1]``. Reading diffusers
concatenates the three (the config then says ``qkv_order="split"``); writing splits it,
regrouping the heads first when the order is guided-diffusion's legacy one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from ..pixel_unet_config import PixelUNetConfig

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
_ATTN_NAMES = {"group_norm": "norm", "to_out.0": "proj_out", "proj_attn": "proj_out"}
_QKV = (("to_q", "to_k", "to_v"), ("query", "key", "value"))
_EXTRAS = (("time_proj.weight", "time_proj"), ("class_embedding.weight", "label_emb.weight"))


def module_pairs(config: PixelUNetConfig) -> list[tuple[str, str, str]]:
    """(diffusers module, canonical module, kind) for every module; kind: leaf, resnet, attention, down, up."""
    rows = [(d, c, "leaf") for d, c in _TOP.items()]
    L = config.num_res_blocks
    index = 1
    for level in range(config.num_levels):
        for j in range(L):
            rows.append((f"down_blocks.{level}.resnets.{j}", f"input_blocks.{index}.0", "resnet"))
            if level in config.attention_levels:
                rows.append((f"down_blocks.{level}.attentions.{j}", f"input_blocks.{index}.1", "attention"))
            index += 1
        if level != config.num_levels - 1:
            kind = "resnet" if config.resblock_updown else "leaf"
            suffix = "" if config.resblock_updown else ".conv"
            target = "" if config.resblock_updown else ".op"
            rows.append((f"down_blocks.{level}.downsamplers.0{suffix}", f"input_blocks.{index}.0{target}", kind))
            index += 1
    rows.append(("mid_block.resnets.0", "middle_block.0", "resnet"))
    if config.mid_attention:
        rows.append(("mid_block.attentions.0", "middle_block.1", "attention"))
    rows.append(("mid_block.resnets.1", f"middle_block.{2 if config.mid_attention else 1}", "resnet"))
    index = 0
    for i, level in enumerate(reversed(range(config.num_levels))):
        attn = level in config.attention_levels
        for j in range(L + 1):
            rows.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{index}.0", "resnet"))
            if attn:
                rows.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{index}.1", "attention"))
            if level and j == L:
                pos = 2 if attn else 1
                if config.resblock_updown:
                    rows.append((f"up_blocks.{i}.upsamplers.0", f"output_blocks.{index}.{pos}", "resnet"))
                else:
                    rows.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{index}.{pos}.conv", "leaf"))
            index += 1
    return rows


def _legacy_permutation(channels: int, heads: int) -> torch.Tensor:
    """Row order that turns a split-order qkv (q; k; v) into guided-diffusion's legacy per-head order."""
    dim = channels // heads
    idx = torch.arange(3 * channels).view(3, heads, dim)
    return idx.permute(1, 0, 2).reshape(-1)


def qkv_to_order(weight: torch.Tensor, channels: int, heads: int, src: str, dst: str) -> torch.Tensor:
    """A qkv weight or bias (rows first) moved from one head order to the other."""
    if src == dst:
        return weight
    perm = _legacy_permutation(channels, heads)
    if dst == "legacy":
        return weight[perm]
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    return weight[inverse]


def _renames(config: PixelUNetConfig) -> Iterator[tuple[str, str]]:
    """(diffusers key, canonical key) of every tensor that is only renamed (all but attention)."""
    yield from _EXTRAS
    for d, c, kind in module_pairs(config):
        if kind == "resnet":
            for dn, cn in _RESNET.items():
                for p in ("weight", "bias"):
                    yield f"{d}.{dn}.{p}", f"{c}.{cn}.{p}"
        elif kind == "leaf":
            for p in ("weight", "bias"):
                yield f"{d}.{p}", f"{c}.{p}"


def diffusers_to_canonical(sd: Mapping[str, torch.Tensor], config: PixelUNetConfig) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DModel`` state dict in canonical names (config.qkv_order must be "split").

    Tensors are the same objects except the fused ``qkv`` (concatenated) and the 1x1 ``proj_out``
    (a view). Keys the map does not know are left out (the loader then reports what is missing).
    """
    out = {c: sd[d] for d, c in _renames(config) if d in sd}
    for d, c, kind in module_pairs(config):
        if kind != "attention":
            continue
        for dn, cn in _ATTN_NAMES.items():
            for p in ("weight", "bias"):
                if f"{d}.{dn}.{p}" in sd:
                    t = sd[f"{d}.{dn}.{p}"]
                    out[f"{c}.{cn}.{p}"] = t[..., None] if cn == "proj_out" and p == "weight" else t
        names = next((n for n in _QKV if f"{d}.{n[0]}.weight" in sd), None)
        if names is not None:
            for p in ("weight", "bias"):
                fused = torch.cat([sd[f"{d}.{n}.{p}"] for n in names], dim=0)
                out[f"{c}.qkv.{p}"] = fused[..., None] if p == "weight" else fused
    return out


def canonical_to_diffusers(sd: Mapping[str, torch.Tensor], config: PixelUNetConfig) -> dict[str, torch.Tensor]:
    """Our canonical state dict in diffusers ``UNet2DModel`` names (current ``to_q``/``to_out.0`` spelling)."""
    out = {d: sd[c] for d, c in _renames(config) if c in sd}
    for d, c, kind in module_pairs(config):
        if kind != "attention":
            continue
        channels = sd[f"{c}.proj_out.weight"].shape[0]
        heads = config.heads_at(channels)
        for p in ("weight", "bias"):
            if f"{c}.norm.{p}" in sd:
                out[f"{d}.group_norm.{p}"] = sd[f"{c}.norm.{p}"]
            proj = sd[f"{c}.proj_out.{p}"]
            out[f"{d}.to_out.0.{p}"] = proj[..., 0] if p == "weight" else proj
            qkv = sd[f"{c}.qkv.{p}"]
            qkv = qkv_to_order(qkv[..., 0] if p == "weight" else qkv, channels, heads, config.qkv_order, "split")
            for name, part in zip(_QKV[0], qkv.chunk(3, dim=0), strict=True):
                out[f"{d}.{name}.{p}"] = part
    return out
