"""Key maps between diffusers' UNet2DConditionModel and the LDM (openaimodel) layout.

The two layouts hold the same tensors under different names, so conversion is pure
renaming: the returned dict holds the very same tensor objects. The map is built per
config from module prefixes (``down_blocks.1.attentions.0`` <-> ``input_blocks.4.1``);
the parameter names inside a transformer are identical in both layouts, those inside a
ResNet block differ only by the module renames in ``_RESNET``. SD1 stores ``proj_in`` /
``proj_out`` as 1x1 convolutions and SD2/SDXL as linear layers in both layouts, so the
shapes never need reshaping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import TypeVar

from ..errors import CheckpointError
from ..unet_config import UNetConfig

T = TypeVar("T")

# diffusers ResnetBlock2D sub-module -> LDM ResBlock sub-module.
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# Parameters inside one BasicTransformerBlock (same names in both layouts).
_TBLOCK_PARAMS = (
    "norm1.weight", "norm1.bias",
    "attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight",
    "attn1.to_out.0.weight", "attn1.to_out.0.bias",
    "norm2.weight", "norm2.bias",
    "attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight",
    "attn2.to_out.0.weight", "attn2.to_out.0.bias",
    "norm3.weight", "norm3.bias",
    "ff.net.0.proj.weight", "ff.net.0.proj.bias",
    "ff.net.2.weight", "ff.net.2.bias",
)


def _resnet_modules(d_prefix: str, l_prefix: str, shortcut: bool) -> dict[str, str]:
    out = {}
    for d_name, l_name in _RESNET.items():
        if d_name == "conv_shortcut" and not shortcut:
            continue
        out[f"{d_prefix}.{d_name}"] = f"{l_prefix}.{l_name}"
    return out


@lru_cache(maxsize=64)
def _module_map(config: UNetConfig) -> tuple[tuple[str, str, str], ...]:
    """(diffusers module, LDM module, kind) for every parameter-holding module of ``config``.

    kind is "leaf" (a module whose params are ``weight``/``bias``), or "transformer:<depth>"
    for a Transformer2DModel/SpatialTransformer whose internals keep their names.
    """
    L = config.layers_per_block
    levels = config.num_levels
    chans = config.block_out_channels
    depths = config.transformer_layers_per_block
    rows: list[tuple[str, str, str]] = []

    def leaf(d: str, ldm_key: str) -> None:
        rows.append((d, ldm_key, "leaf"))

    for d, ldm_key in _TOP.items():
        if d.startswith("add_embedding") and config.addition_embed_type is None:
            continue
        leaf(d, ldm_key)

    # Down path.
    ch = chans[0]
    for i in range(levels):
        out_ch = chans[i]
        for j in range(L):
            ldm = 1 + i * (L + 1) + j
            for d, ldm_key in _resnet_modules(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{ldm}.0",
                                        shortcut=ch != out_ch).items():
                leaf(d, ldm_key)
            if depths[i]:
                rows.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{ldm}.1",
                             f"transformer:{depths[i]}"))
            ch = out_ch
        if i < levels - 1:
            leaf(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{1 + i * (L + 1) + L}.0.op")

    # Middle.
    mid_depth = config.mid_transformer_layers
    last = chans[-1]
    for j, slot in ((0, 0), (1, 2)):
        for d, ldm_key in _resnet_modules(f"mid_block.resnets.{j}", f"middle_block.{slot}", shortcut=False).items():
            leaf(d, ldm_key)
    if mid_depth:
        rows.append(("mid_block.attentions.0", "middle_block.1", f"transformer:{mid_depth}"))

    # Up path: up block i works at level levels-1-i and has L+1 resnets; each takes the
    # previous output concatenated with a skip from the down path.
    skips = [chans[0]]
    for i in range(levels):
        skips += [chans[i]] * L
        if i < levels - 1:
            skips.append(chans[i])
    prev = last
    for i in range(levels):
        level = levels - 1 - i
        out_ch = chans[level]
        for j in range(L + 1):
            ldm = i * (L + 1) + j
            skip = skips.pop()
            for d, ldm_key in _resnet_modules(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{ldm}.0",
                                        shortcut=(prev + skip) != out_ch).items():
                leaf(d, ldm_key)
            if depths[level]:
                rows.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{ldm}.1",
                             f"transformer:{depths[level]}"))
            prev = out_ch
        if i < levels - 1:
            slot = 2 if depths[level] else 1
            leaf(f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{i * (L + 1) + L}.{slot}.conv")
    return tuple(rows)


def _transformer_params(depth: int) -> list[str]:
    names = ["norm.weight", "norm.bias", "proj_in.weight", "proj_in.bias"]
    for k in range(depth):
        names += [f"transformer_blocks.{k}.{p}" for p in _TBLOCK_PARAMS]
    names += ["proj_out.weight", "proj_out.bias"]
    return names


@lru_cache(maxsize=64)
def _diffusers_to_ldm(config: UNetConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    for d, ldm_key, kind in _module_map(config):
        if kind == "leaf":
            for p in ("weight", "bias"):
                out[f"{d}.{p}"] = f"{ldm_key}.{p}"
        else:
            for p in _transformer_params(int(kind.split(":")[1])):
                out[f"{d}.{p}"] = f"{ldm_key}.{p}"
    return out


def diffusers_to_ldm_keymap(config: UNetConfig) -> dict[str, str]:
    """Every parameter of ``config``'s UNet: full diffusers name -> bare LDM name (a fresh dict)."""
    return dict(_diffusers_to_ldm(config))


def ldm_to_diffusers_keymap(config: UNetConfig) -> dict[str, str]:
    """The inverse of :func:`diffusers_to_ldm_keymap`."""
    return {ldm_key: d for d, ldm_key in _diffusers_to_ldm(config).items()}


@lru_cache(maxsize=64)
def _prefix_maps(config: UNetConfig) -> tuple[dict[str, str], dict[str, str]]:
    fwd = {d: ldm_key for d, ldm_key, _ in _module_map(config)}
    return fwd, {ldm_key: d for d, ldm_key in fwd.items()}


def _rename(key: str, prefixes: Mapping[str, str]) -> str | None:
    """Longest module-prefix match of ``key`` (split on dots) renamed through ``prefixes``."""
    pos = len(key)
    while True:
        pos = key.rfind(".", 0, pos)
        if pos <= 0:
            return None
        head = key[:pos]
        if head in prefixes:
            return prefixes[head] + key[pos:]


def _convert(sd: Mapping[str, T], prefixes: Mapping[str, str], direction: str, strict: bool) -> dict[str, T]:
    out: dict[str, T] = {}
    unknown: list[str] = []
    for key, tensor in sd.items():
        new = _rename(key, prefixes)
        if new is None:
            unknown.append(key)
            new = key
        if new in out:
            raise CheckpointError(None, f"{direction}: two keys map to {new!r}; the state dict mixes layouts")
        out[new] = tensor
    if unknown and strict:
        sample = ", ".join(sorted(unknown)[:6])
        raise CheckpointError(None, f"{direction}: {len(unknown)} keys do not belong to a UNet of this config "
                                    f"(e.g. {sample}); is the config right, or is this another kind of file?")
    return out


def convert_diffusers_to_ldm(sd: Mapping[str, T], config: UNetConfig, strict: bool = True) -> dict[str, T]:
    """Rename a bare diffusers UNet state dict to bare LDM names; the values are the same objects.

    ``strict`` raises on keys that are no UNet parameter of ``config``; otherwise they pass unchanged.
    """
    return _convert(sd, _prefix_maps(config)[0], "diffusers -> LDM", strict)


def convert_ldm_to_diffusers(sd: Mapping[str, T], config: UNetConfig, strict: bool = True) -> dict[str, T]:
    """Rename a bare LDM UNet state dict to diffusers names; the values are the same objects."""
    return _convert(sd, _prefix_maps(config)[1], "LDM -> diffusers", strict)


def ldm_module_name(diffusers_module: str, config: UNetConfig) -> str | None:
    """LDM name of a diffusers module path (a module or parameter), e.g. for LoRA targets."""
    fwd = _prefix_maps(config)[0]
    if diffusers_module in fwd:
        return fwd[diffusers_module]
    return _rename(diffusers_module, fwd)


def strip_prefix(sd: Mapping[str, T], prefix: str) -> dict[str, T]:
    """Keys starting with ``prefix``, without it (same values)."""
    n = len(prefix)
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix)}


def add_prefix(sd: Mapping[str, T], prefix: str) -> dict[str, T]:
    return {prefix + k: v for k, v in sd.items()}


def iter_ldm_keys(config: UNetConfig) -> Iterable[str]:
    return _diffusers_to_ldm(config).values()
