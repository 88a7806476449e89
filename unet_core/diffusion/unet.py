"""The SD-family diffusion UNet in LDM key layout, for any :class:`UNetConfig`.

Parameter names and shapes are those of LDM/SGM checkpoints (``input_blocks``,
``middle_block``, ``output_blocks``, ``time_embed``, ``label_emb``, ``out``), so
canonical state dicts load strictly. ComfyUI's block patch points are honoured
with ComfyUI's signatures (see :meth:`UNetModel.forward`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..unet_config import UNetConfig
from . import ops
from .attention import SpatialTransformer
from .embeddings import timestep_embedding
from .resblock import Downsample, ResBlock, Upsample
from .skip_concat import SKIP_CONCATENATION, concatenate_skip


class TimestepEmbedSequential(nn.Sequential):
    """A block: layers that take ``(x, emb)``, ``(x, context, options)`` or ``x``."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,  # type: ignore[override]
                transformer_options: dict[str, Any] | None = None,
                output_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, transformer_options)
                if transformer_options is not None and "transformer_index" in transformer_options:
                    transformer_options["transformer_index"] += 1
            elif isinstance(layer, Upsample):
                x = layer(x, output_shape)
            else:
                x = layer(x)
        return x


def _heads(config: UNetConfig, level: int, channels: int) -> tuple[int, int]:
    heads = config.num_attention_heads[level]
    if channels % heads:
        raise ValueError(f"level {level}: {channels} channels do not split into {heads} heads")
    return heads, channels // heads


class UNetModel(nn.Module):
    """LDM ``UNetModel`` for SD1/SD2/SDXL-style configs (2D, no video, no controlnet)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc = config.block_out_channels[0]
        ted = config.time_embed_dim
        groups = config.norm_num_groups
        ctx = config.cross_attention_dim
        linear = config.use_linear_projection
        self.model_channels = mc
        self.dtype = torch.float32  # compute dtype; the patcher sets it

        self.time_embed = nn.Sequential(ops.Linear(mc, ted), nn.SiLU(), ops.Linear(ted, ted))
        self.num_classes: str | None = None
        if config.addition_embed_type is not None:
            if config.projection_class_embeddings_input_dim is None:
                raise ValueError("addition_embed_type needs projection_class_embeddings_input_dim")
            self.num_classes = "sequential"
            adm = config.projection_class_embeddings_input_dim
            self.label_emb = nn.Sequential(nn.Sequential(ops.Linear(adm, ted), nn.SiLU(), ops.Linear(ted, ted)))

        def transformer(level: int, ch: int, depth: int) -> SpatialTransformer:
            heads, dim_head = _heads(config, level, ch)
            return SpatialTransformer(ch, heads, dim_head, depth, ctx, linear, groups)

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(ops.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch = mc
        levels = config.num_levels
        for level, width in enumerate(config.block_out_channels):
            depth = config.transformer_layers_per_block[level]
            for _ in range(config.layers_per_block):
                layers: list[nn.Module] = [ResBlock(ch, ted, width, groups)]
                ch = width
                if depth > 0:
                    layers.append(transformer(level, ch, depth))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != levels - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, ted, ch, groups),
            transformer(levels - 1, ch, config.mid_transformer_layers),
            ResBlock(ch, ted, ch, groups))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            width = config.block_out_channels[level]
            depth = config.transformer_layers_per_block[level]
            for i in range(config.layers_per_block + 1):
                skip = skip_channels.pop()
                layers = [ResBlock(ch + skip, ted, width, groups)]
                ch = width
                if depth > 0:
                    layers.append(transformer(level, ch, depth))
                if level and i == config.layers_per_block:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(ops.GroupNorm(groups, ch), nn.SiLU(),
                                 ops.Conv2d(mc, config.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None,
                transformer_options: dict[str, Any] | None = None, **_: Any) -> torch.Tensor:
        """Predict noise (or v) for latents ``x`` [B, C, H, W] at ``timesteps`` [B].

        ``context`` [B, T, cross_attention_dim]; ``y`` [B, adm] for ADM models (SDXL).
        ``transformer_options`` carries ComfyUI's ``patches`` / ``patches_replace`` and
        pass-through keys (``cond_or_uncond``…); this call adds ``original_shape``,
        ``block``, ``block_index`` and ``transformer_index`` to a copy of it.
        Block patches: ``input_block_patch(h, opts) -> h`` and
        ``input_block_patch_after_skip(h, opts) -> h`` after each input block (before /
        after the skip is stored), ``middle_block_patch(h, opts) -> h`` after the middle
        block, ``output_block_patch(h, hsp, opts) -> (h, hsp)`` before each output block's
        concatenation (which such a patch may make itself: ``skip_concat``).
        """
        options = dict(transformer_options or {})
        options["original_shape"] = list(x.shape)
        options["transformer_index"] = 0
        patches = options.get("patches", {}) or {}
        if (self.num_classes is not None) != (y is not None):
            raise ValueError("y must be given exactly when the model has an ADM (label_emb) input")

        dtype = self.dtype
        out_dtype = x.dtype
        t_emb = timestep_embedding(timesteps.to(x.device), self.model_channels).to(dtype)
        emb = self.time_embed(t_emb)
        if self.num_classes is not None:
            assert y is not None
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"y has batch {y.shape[0]}, x has {x.shape[0]}")
            emb = emb + self.label_emb(y.to(dtype))
        if context is not None:
            context = context.to(dtype)

        h = x.to(dtype)
        hs: list[torch.Tensor] = []
        for idx, module in enumerate(self.input_blocks):
            options["block"] = ("input", idx)
            h = module(h, emb, context, options)
            for p in patches.get("input_block_patch", []):
                h = p(h, options)
            hs.append(h)
            for p in patches.get("input_block_patch_after_skip", []):
                h = p(h, options)

        options["block"] = ("middle", 0)
        h = self.middle_block(h, emb, context, options)
        for p in patches.get("middle_block_patch", []):
            h = p(h, options)

        for idx, module in enumerate(self.output_blocks):
            options["block"] = ("output", idx)
            hsp = hs.pop()
            options[SKIP_CONCATENATION] = None  # a patch may hand over the concatenation (skip_concat)
            for p in patches.get("output_block_patch", []):
                h, hsp = p(h, hsp, options)
            h = concatenate_skip(h, hsp, options)
            del hsp
            output_shape = tuple(hs[-1].shape) if hs else None
            h = module(h, emb, context, options, output_shape)
        return self.out(h).to(out_dtype)
