"""Whether a UNet file may replace the UNet of a MODEL (Swap UNet)."""

from __future__ import annotations

from ..errors import FamilyMismatchError
from ..unet_config import UNetConfig

# Fields that decide parameter names and shapes.
SHAPE_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block",
                "transformer_layers_per_block", "cross_attention_dim", "use_linear_projection",
                "projection_class_embeddings_input_dim", "mid_transformer_layers")


def _label(family: str | None, config: UNetConfig | None) -> str:
    if family:
        return family
    if config is None:
        return "unknown"
    return (f"custom config (channels {list(config.block_out_channels)}, depth "
            f"{list(config.transformer_layers_per_block)}, context {config.cross_attention_dim}, "
            f"in {config.in_channels})")


def check_swap(model_family: str | None, model_config: UNetConfig | None,
               file_family: str | None, file_config: UNetConfig | None, file_name: str = "") -> None:
    """Raise FamilyMismatchError unless the file's UNet has the model's family and shapes."""
    what = f"Swap UNet ({file_name})" if file_name else "Swap UNet"
    model_family = None if model_family in (None, "", "unknown") else model_family
    file_family = None if file_family in (None, "", "unknown") else file_family
    same_family = model_family == file_family
    same_shapes = (model_config is not None and file_config is not None
                   and all(getattr(model_config, f) == getattr(file_config, f) for f in SHAPE_FIELDS))
    if not (same_family and same_shapes):
        raise FamilyMismatchError(_label(model_family, model_config), _label(file_family, file_config), what)
