"""The configuration of a pixel-space diffusion U-Net (DDPM family), in one form for both layouts.

One :class:`PixelUNetConfig` describes a diffusers ``UNet2DModel`` and an OpenAI
improved/guided-diffusion ``UNetModel`` alike: both are the DDPM U-Net (ResBlocks with a
time embedding, self-attention at chosen levels, the same skip and channel bookkeeping).
Fields that only one layout can express carry that layout's default for the other
(``downsample_padding`` 0 is diffusers' asymmetric pad, ``qkv_order`` "legacy" is
guided-diffusion's head-interleaved fused projection).

It also carries how the model is sampled (prediction type, beta schedule), since a pixel
diffusion file has no separate scheduler: those fields are stored in our safetensors
metadata and otherwise follow the published family's defaults.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .errors import CheckpointError

QKV_ORDERS = ("legacy", "split")        # legacy: per head (q, k, v); split: all q, all k, all v
TIME_EMBEDDINGS = ("positional", "fourier")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "cosine")
METADATA_KEY = "unet_lab.pixel_diffusion.config"


@dataclass(frozen=True)
class PixelUNetConfig:
    """Every hyper-parameter that fixes a pixel diffusion U-Net's tensors and forward pass.

    ``block_channels[i]`` is the width of level ``i`` (level 0 at full resolution; each
    later level halves the size). ``attention_levels`` lists the levels whose ResBlocks are
    followed by self-attention, in the encoder and the decoder alike. Heads: ``head_channels``
    channels per head when set, else ``num_heads`` heads at every level.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_channels: tuple[int, ...] = (128, 256, 256, 256)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1,)
    mid_attention: bool = True
    mid_attention_norm: bool = True       # diffusers drops it in the mid block with scale-shift norm
    head_channels: int | None = None
    num_heads: int = 1
    qkv_order: str = "legacy"
    scale_shift_norm: bool = False
    resblock_updown: bool = False
    downsample_padding: int = 1           # 0: diffusers' asymmetric (0, 1, 0, 1) pad before a stride-2 conv
    time_channels: int = 128              # width of the sinusoidal (or 2 x fourier) time features
    time_embed_dim: int = 512
    time_embedding: str = "positional"
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    num_classes: int | None = None
    null_class: bool = False              # the last class index is "no class" (classifier-free guidance)
    norm_groups: int = 32
    norm_eps: float = 1e-5
    mid_scale: float = 1.0                # diffusers' mid_block_scale_factor
    center_input: bool = False
    image_size: int | None = None
    prediction: str = "epsilon"
    beta_schedule: str = "linear"
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        problems = []
        if self.qkv_order not in QKV_ORDERS:
            problems.append(f"qkv_order {self.qkv_order!r} not in {QKV_ORDERS}")
        if self.time_embedding not in TIME_EMBEDDINGS:
            problems.append(f"time_embedding {self.time_embedding!r} not in {TIME_EMBEDDINGS}")
        if self.prediction not in PREDICTIONS:
            problems.append(f"prediction {self.prediction!r} not in {PREDICTIONS}")
        if self.beta_schedule not in BETA_SCHEDULES:
            problems.append(f"beta_schedule {self.beta_schedule!r} not in {BETA_SCHEDULES}")
        if not self.block_channels or any(c <= 0 or c % self.norm_groups for c in self.block_channels):
            problems.append(f"block_channels {self.block_channels} must be positive multiples of "
                            f"{self.norm_groups} (the group norm's groups)")
        if any(not 0 <= lv < len(self.block_channels) for lv in self.attention_levels):
            problems.append(f"attention_levels {self.attention_levels} outside 0..{len(self.block_channels) - 1}")
        for ch in self.attention_widths:
            if self.head_channels and ch % self.head_channels:
                problems.append(f"width {ch} is not a multiple of head_channels {self.head_channels}")
            if not self.head_channels and ch % self.num_heads:
                problems.append(f"width {ch} is not a multiple of num_heads {self.num_heads}")
        if problems:
            raise ValueError("PixelUNetConfig: " + "; ".join(problems))

    @property
    def num_levels(self) -> int:
        return len(self.block_channels)

    @property
    def learned_sigma(self) -> bool:
        """The model predicts a variance interpolation too (improved-diffusion): twice the image channels."""
        return self.out_channels == 2 * self.in_channels

    @property
    def image_channels(self) -> int:
        return self.in_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.num_levels - 1)

    @property
    def attention_widths(self) -> tuple[int, ...]:
        """The widths at which self-attention runs (attention levels, then the middle block)."""
        widths = [self.block_channels[lv] for lv in self.attention_levels]
        return tuple(widths + [self.block_channels[-1]] * self.mid_attention)

    def heads_at(self, channels: int) -> int:
        return channels // self.head_channels if self.head_channels else self.num_heads

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str | None = None) -> PixelUNetConfig:
        """The config stored by :meth:`to_json`; CheckpointError naming ``where`` if it does not parse."""
        try:
            data = json.loads(text)
            fields = {f.name for f in dataclasses.fields(cls)}
            unknown = set(data) - fields
            if unknown:
                raise ValueError(f"unknown fields {sorted(unknown)}")
            for key in ("block_channels", "attention_levels"):
                if key in data:
                    data[key] = tuple(data[key])
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(where, f"the stored pixel diffusion config is unusable ({exc})") from None


# Published architectures (keys and shapes of the real files; see infer.py for the rules).
DDPM_CIFAR10_32 = PixelUNetConfig(
    block_channels=(128, 256, 256, 256), attention_levels=(1,), num_res_blocks=2, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1.0, norm_eps=1e-6, qkv_order="split", image_size=32)
DDPM_256 = PixelUNetConfig(   # google/ddpm-celebahq-256, -church-256, -bedroom-256, -cat-256
    block_channels=(128, 128, 256, 256, 512, 512), attention_levels=(4,), num_res_blocks=2, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1.0, norm_eps=1e-6, qkv_order="split", image_size=256)
GUIDED_64_COND = PixelUNetConfig(  # openai/guided-diffusion 64x64_diffusion.pt
    out_channels=6, block_channels=(192, 384, 576, 768), num_res_blocks=3, attention_levels=(1, 2, 3),
    head_channels=64, qkv_order="split", scale_shift_norm=True, resblock_updown=True, time_channels=192,
    time_embed_dim=768, num_classes=1000, image_size=64, beta_schedule="cosine")
GUIDED_256_UNCOND = PixelUNetConfig(  # openai/guided-diffusion 256x256_diffusion_uncond.pt
    out_channels=6, block_channels=(256, 256, 512, 512, 1024, 1024), num_res_blocks=2, attention_levels=(3, 4, 5),
    head_channels=64, scale_shift_norm=True, resblock_updown=True, time_channels=256, time_embed_dim=1024,
    image_size=256)
