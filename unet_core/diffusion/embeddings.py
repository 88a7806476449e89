"""Sinusoidal timestep embeddings (LDM / SGM convention: cos half first)."""

from __future__ import annotations

import math

import torch


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] timesteps -> [N, dim] embedding ``cat(cos(t*f), sin(t*f))``, f = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=timesteps.device) / half)
    args = timesteps.reshape(-1).float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sdxl_adm_embedding(text_embeds: torch.Tensor, time_ids: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """SDXL's ``y``: pooled text [B, P] then the embedding of each of the 6 size/crop ids [B, 6].

    Each id is embedded with :func:`timestep_embedding` at ``dim`` and the results are
    flattened per sample, giving ``[B, P + 6*dim]`` (2816 for SDXL's base UNet).
    """
    batch = time_ids.shape[0]
    emb = timestep_embedding(time_ids.reshape(-1), dim).reshape(batch, -1)
    return torch.cat([text_embeds.float(), emb], dim=-1).to(text_embeds.dtype)
