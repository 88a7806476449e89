"""Cross-attention, the transformer block and the spatial transformer, with ComfyUI's patch points.

Patch points (names and signatures as in ComfyUI, so one patch function runs in both hosts):

* ``patches["attn1_patch"|"attn2_patch"]``: ``fn(n, context, value, extra_options) -> (n, context, value)``
  before self / cross attention;
* ``patches["attn1_output_patch"|"attn2_output_patch"]``: ``fn(n, extra_options) -> n`` after it;
* ``patches_replace["attn1"|"attn2"][key]``: ``fn(q, k, v, extra_options) -> out`` replaces the
  attention itself (q, k, v already projected, ``[B, N, heads*dim_head]``); ``key`` is
  ``(block_name, block_id, block_index)`` or, failing that, ``(block_name, block_id)``.

``extra_options`` is the transformer options without the patch lists, plus ``n_heads``
and ``dim_head``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import ops


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head scaled-dot-product attention on ``[B, N, heads*d]`` tensors."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, inner)


class CrossAttention(nn.Module):
    """LDM attention: bias-free q/k/v projections, ``to_out.0`` with bias."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = ops.Linear(query_dim, inner, bias=False)
        self.to_k = ops.Linear(context_dim, inner, bias=False)
        self.to_v = ops.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(ops.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                value: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        value = context if value is None else value
        q = self.to_q(x)
        k = self.to_k(context)
        v = self.to_v(value)
        return self.to_out(attention(q, k, v, self.heads))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = ops.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """``net.0.proj`` (GEGLU, 4x inner) then ``net.2``."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(0.0), ops.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _split_options(transformer_options: dict[str, Any]) -> tuple[dict, dict, dict]:
    patches = transformer_options.get("patches", {}) or {}
    replace = transformer_options.get("patches_replace", {}) or {}
    extra = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
    return patches, replace, extra


_BLOCK_PATCHES = ("attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch")


def _replace_fn(table: dict, full_key: Any, block: Any) -> Any:
    if full_key is not None and full_key in table:
        return table[full_key]
    if block is not None and block in table:
        return table[block]
    return None


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention and GEGLU feed-forward, each pre-LayerNorm and residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.n_heads = heads
        self.d_head = dim_head
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = ops.LayerNorm(dim)
        self.norm2 = ops.LayerNorm(dim)
        self.norm3 = ops.LayerNorm(dim)

    def _patched_attention(self, name: str, n: torch.Tensor, context: torch.Tensor | None, patches: dict,
                           replace: dict, full_key: Any, block: Any, extra: dict) -> torch.Tensor:
        """``attn1`` (self-attention: ``context`` None) or ``attn2`` with ComfyUI's patches around it:
        ``{name}_patch`` (sees and may change q-input, context and value; value starts as the
        context, which for ``attn1`` is ``n``), a ``{name}`` replacement for this block, ``{name}_output_patch``."""
        value: torch.Tensor | None = None
        if f"{name}_patch" in patches:
            context = n if name == "attn1" else context  # as ComfyUI: self-attention's context is its input
            value = context
            for p in patches[f"{name}_patch"]:
                n, context, value = p(n, context, value, extra)
        n = self._run_attn(getattr(self, name), n, context, value,
                           _replace_fn(replace.get(name, {}), full_key, block), extra)
        for p in patches.get(f"{name}_output_patch", []):
            n = p(n, extra)
        return n

    def _run_attn(self, attn: CrossAttention, n: torch.Tensor, context: torch.Tensor | None,
                  value: torch.Tensor | None, replace: Any, extra: dict) -> torch.Tensor:
        if replace is None:
            return attn(n, context=context, value=value)
        context = n if context is None else context
        value = context if value is None else value
        q, k, v = attn.to_q(n), attn.to_k(context), attn.to_v(value)
        return attn.to_out(replace(q, k, v, extra))

    def plain(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """The block without patches: tensors in, tensors out (what ``diffusion.compiled``
        compiles; no per-block dict reaches the compiler, so one compiled graph serves every
        block of a shape)."""
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context=context)
        return x + self.ff(self.norm3(x))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None,
                transformer_options: dict[str, Any] | None = None) -> torch.Tensor:
        options = transformer_options or {}
        patches, replace, extra = _split_options(options)
        if not replace.get("attn1") and not replace.get("attn2") and not any(k in patches for k in _BLOCK_PATCHES):
            return self.plain(x, context)
        extra["n_heads"] = self.n_heads
        extra["dim_head"] = self.d_head
        block = options.get("block")
        block_index = options.get("block_index", 0)
        full_key = (block[0], block[1], block_index) if block is not None else None

        x = x + self._patched_attention("attn1", self.norm1(x), None, patches, replace, full_key, block, extra)
        x = x + self._patched_attention("attn2", self.norm2(x), context, patches, replace, full_key, block, extra)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, ``proj_in`` (1x1 conv or linear), transformer blocks, ``proj_out``, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 use_linear: bool, groups: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = ops.GroupNorm(groups, channels, eps=1e-6)
        if use_linear:
            self.proj_in: nn.Module = ops.Linear(channels, inner)
        else:
            self.proj_in = ops.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)])
        if use_linear:
            self.proj_out: nn.Module = ops.Linear(inner, channels)
        else:
            self.proj_out = ops.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None,
                transformer_options: dict[str, Any] | None = None) -> torch.Tensor:
        options = transformer_options if transformer_options is not None else {}
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            options["block_index"] = i
            x = block(x, context, options)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in
