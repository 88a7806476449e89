"""Configuration of an SD-family UNet, named after diffusers' config fields.

One frozen dataclass describes SD1.x, SD2.x, SDXL, their inpaint variants and any
reduced test config. Per-level fields are tuples with one entry per resolution
level (``len(block_out_channels)``); the middle block uses the last level's
values. ``transformer_layers_per_block[i] == 0`` means level ``i`` has no attention.

A leaf module (stdlib only): every room that reads or builds an SD-family UNet
(``checkpoints``, ``diffusion``, ``lora``, ``gates``) imports it, and it imports none of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 0)
    num_attention_heads: tuple[int, ...] = (8, 8, 8, 8)
    cross_attention_dim: int = 768
    use_linear_projection: bool = False
    norm_num_groups: int = 32
    # SDXL's "text_time" additional embedding (label_emb in LDM); None elsewhere.
    addition_embed_type: str | None = None
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int | None = None
    mid_block_transformer_layers: int | None = field(default=None)

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        for name in ("transformer_layers_per_block", "num_attention_heads"):
            value = getattr(self, name)
            if len(value) != levels:
                raise ValueError(f"UNetConfig.{name} has {len(value)} entries, expected {levels}")

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def mid_transformer_layers(self) -> int:
        if self.mid_block_transformer_layers is not None:
            return self.mid_block_transformer_layers
        return max(self.transformer_layers_per_block[-1], 1)

    def attention_levels(self) -> tuple[int, ...]:
        """Indices of the levels whose blocks hold transformers."""
        return tuple(i for i, depth in enumerate(self.transformer_layers_per_block) if depth > 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**kwargs)

    def with_(self, **changes: Any) -> UNetConfig:
        return replace(self, **changes)


# The released families' configs (their diffusers config.json files). SD1: 8 heads; SD2/SDXL: 64-channel heads.
SD1_CONFIG = UNetConfig()
SD2_CONFIG = UNetConfig(
    num_attention_heads=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
)
SDXL_CONFIG = UNetConfig(
    block_out_channels=(320, 640, 1280),
    transformer_layers_per_block=(0, 2, 10),
    num_attention_heads=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    projection_class_embeddings_input_dim=2816,
)
