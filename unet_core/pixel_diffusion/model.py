"""The DDPM-family pixel U-Net, in guided-diffusion's module layout (our canonical key names).

Parameter names follow OpenAI's improved/guided-diffusion ``UNetModel`` (``input_blocks``,
``middle_block``, ``output_blocks``, ``time_embed``, ``label_emb``, ``out``), so its files load
with no renaming; diffusers ``UNet2DModel`` files are renamed into it by ``keymap``. The fused
attention projection ``qkv`` keeps guided-diffusion's ``[3C, C, 1]`` shape and is read as a
token-major linear layer (a free view), with the head order the config names.

Every GroupNorm runs through :func:`.norm_act.norm_act` with the add, scale-shift or SiLU around it:
one fused Triton pass in CUDA inference, the modules' own ops elsewhere.

Forward: ``model(x [B,C,H,W], t [B] float or int, class_labels [B] long | None) -> [B,out,H,W]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..pixel_unet_config import PixelUNetConfig
from .norm_act import norm_act


def timestep_features(t: torch.Tensor, config: PixelUNetConfig, fourier: torch.Tensor | None) -> torch.Tensor:
    """Sinusoidal (or Gaussian-Fourier) time features ``[B, time_channels]`` in float32."""
    t = t.float()
    if config.time_embedding == "fourier":
        assert fourier is not None
        arg = torch.log(t)[:, None] * fourier.float()[None, :] * (2 * math.pi)
    else:
        half = config.time_channels // 2
        exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device)
        arg = t[:, None] * torch.exp(exponent / (half - config.freq_shift))[None, :]
    sin, cos = torch.sin(arg), torch.cos(arg)
    return torch.cat([cos, sin] if config.flip_sin_to_cos else [sin, cos], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the time embedding added (or as scale and shift) in between."""

    def __init__(self, cin: int, cout: int, config: PixelUNetConfig, resample: str | None = None,
                 scale: float = 1.0) -> None:
        super().__init__()
        g, eps = config.norm_groups, config.norm_eps
        self.in_layers = nn.Sequential(nn.GroupNorm(g, cin, eps), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        width = 2 * cout if config.scale_shift_norm else cout
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(config.time_embed_dim, width))
        self.out_layers = nn.Sequential(nn.GroupNorm(g, cout, eps), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        self.resample, self.scale_shift, self.scale = resample, config.scale_shift_norm, scale

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, _, conv = self.in_layers
        h = norm_act(x, norm)
        if self.resample:
            h, x = self._resample(h), self._resample(x)
        h = conv(h)
        e = self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        norm2, _, drop, conv2 = self.out_layers
        if self.scale_shift:
            h = norm_act(h, norm2, scale_shift=tuple(e.chunk(2, dim=1)))
        else:
            h = norm_act(h, norm2, add=e)
        h = conv2(drop(h))
        out = self.skip_connection(x) + h
        return out if self.scale == 1.0 else out / self.scale


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual: GroupNorm, fused qkv projection, SDPA, output projection."""

    def __init__(self, channels: int, config: PixelUNetConfig, norm: bool = True, scale: float = 1.0) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(config.norm_groups, channels, config.norm_eps) if norm else nn.Identity()
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.heads, self.order, self.scale = config.heads_at(channels), config.qkv_order, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        tokens = norm_act(x, self.norm, silu=False).flatten(2).transpose(1, 2)  # [B, T, C]
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)     # [B, T, 3C]
        heads, dim = self.heads, c // self.heads
        if self.order == "legacy":
            qkv = qkv.view(b, -1, heads, 3, dim).permute(3, 0, 2, 1, 4)        # [3, B, H, T, d]
        else:
            qkv = qkv.view(b, -1, 3, heads, dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])          # [B, H, T, d]
        out = out.transpose(1, 2).reshape(b, -1, c)
        out = F.linear(out, self.proj_out.weight.squeeze(-1), self.proj_out.bias)
        out = out.transpose(1, 2).reshape(b, c, hgt, wid) + x
        return out if self.scale == 1.0 else out / self.scale


class Downsample(nn.Module):
    """Stride-2 3x3 conv; padding 0 means diffusers' asymmetric (0, 1, 0, 1) zero pad first."""

    def __init__(self, channels: int, padding: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)
        self.pad = padding == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(F.pad(x, (0, 1, 0, 1)) if self.pad else x)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Step(nn.Sequential):
    """One numbered entry of ``input_blocks`` / ``output_blocks``: layers that may take the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class PixelUNet(nn.Module):
    """The U-Net of DDPM / improved / guided diffusion for ``config``."""

    def __init__(self, config: PixelUNetConfig) -> None:
        super().__init__()
        self.config = c = config
        chans = c.block_channels
        if c.time_embedding == "fourier":
            self.register_buffer("time_proj", torch.zeros(c.time_channels // 2), persistent=True)
        self.time_embed = nn.Sequential(nn.Linear(c.time_channels, c.time_embed_dim), nn.SiLU(),
                                        nn.Linear(c.time_embed_dim, c.time_embed_dim))
        if c.num_classes:
            self.label_emb = nn.Embedding(c.num_classes, c.time_embed_dim)
        self.input_blocks = nn.ModuleList([Step(nn.Conv2d(c.in_channels, chans[0], 3, padding=1))])
        skips, ch = [chans[0]], chans[0]
        for level, width in enumerate(chans):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, width, c)]
                ch = width
                if level in c.attention_levels:
                    layers.append(AttentionBlock(ch, c))
                self.input_blocks.append(Step(*layers))
                skips.append(ch)
            if level != c.num_levels - 1:
                down = ResBlock(ch, ch, c, "down") if c.resblock_updown else Downsample(ch, c.downsample_padding)
                self.input_blocks.append(Step(down))
                skips.append(ch)
        mid: list[nn.Module] = [ResBlock(ch, ch, c, scale=c.mid_scale)]
        if c.mid_attention:
            mid.append(AttentionBlock(ch, c, norm=c.mid_attention_norm, scale=c.mid_scale))
        mid.append(ResBlock(ch, ch, c, scale=c.mid_scale))
        self.middle_block = Step(*mid)
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(c.num_levels)):
            width = chans[level]
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), width, c)]
                ch = width
                if level in c.attention_levels:
                    layers.append(AttentionBlock(ch, c))
                if level and i == c.num_res_blocks:
                    layers.append(ResBlock(ch, ch, c, "up") if c.resblock_updown else Upsample(ch))
                self.output_blocks.append(Step(*layers))
        self.out = nn.Sequential(nn.GroupNorm(c.norm_groups, ch, c.norm_eps), nn.SiLU(),
                                 nn.Conv2d(ch, c.out_channels, 3, padding=1))

    def embedding(self, t: torch.Tensor, class_labels: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        feats = timestep_features(t, self.config, getattr(self, "time_proj", None))
        emb = self.time_embed(feats.to(dtype))
        if self.config.num_classes:
            if class_labels is None:
                raise ValueError("this pixel diffusion model is class-conditional: give class_labels")
            emb = emb + self.label_emb(class_labels).to(emb.dtype)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        dtype = self.out[2].weight.dtype
        emb = self.embedding(t, class_labels, dtype)
        h = 2 * x - 1 if self.config.center_input else x
        h = h.to(dtype)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        norm, _, conv = self.out
        out = conv(norm_act(h, norm))
        if self.config.time_embedding == "fourier":
            out = out / t.to(out.dtype).view(-1, 1, 1, 1)
        return out
