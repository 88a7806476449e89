"""IMAGE batches to model input: shape, channel and value checks, then scaling and normalisation.

What happens to unusual input (each case gives a warning that ``segment`` logs and reports):

- RGBA (C = 4): the alpha channel is dropped; C = 2 (gray + alpha) keeps the gray channel.
- Grayscale (C = 1) for a 3-channel model: replicated; RGB for a 1-channel model: luminance
  (ITU-R BT.601 weights). Any other mismatch is an ``InputError``.
- Values outside 0..1: integer tensors are scaled by their type (uint8 / 255, wider / 65535);
  float values whose maximum exceeds 1.5 are taken for 8-bit (max <= 255, / 255) or 16-bit
  (max <= 65535, / 65535) pixel values that an upstream node forgot to scale, since clamping
  them would turn the image white; small excursions (a colour-correction overshoot) are
  clamped to 0..1. Anything larger than 65535 is refused.
- NaN or infinite pixels are refused with an ``InputError`` naming the input: replacing them
  silently would segment something the user did not see.
- An empty batch or a zero-sized image is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InputError

LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class InputPlan:
    """How raw IMAGE values become model input: scale, clamp, channel mapping."""

    scale: float
    clamp: bool
    channel_map: str  # "direct", "drop_alpha", "gray_alpha", "replicate", "luma"
    warnings: tuple[str, ...]


def inspect_images(images: torch.Tensor, in_channels: int, input_name: str = "image",
                   rows_per_chunk: int = 256, values: bool = True) -> InputPlan:
    """Check an IMAGE batch and decide how to map it to the model's input; raises InputError.

    ``values=False`` checks shape and channels only (cheap: nothing is read).
    """
    if not isinstance(images, torch.Tensor):
        raise InputError(f"input '{input_name}': expected an IMAGE tensor [B, H, W, C], got {type(images).__name__}")
    if images.ndim == 3:
        raise InputError(f"input '{input_name}': got a 3-D tensor {tuple(images.shape)}; an IMAGE is [B, H, W, C] "
                         "(a MASK [B, H, W] needs MaskToImage first)")
    if images.ndim != 4:
        raise InputError(f"input '{input_name}': expected an IMAGE [B, H, W, C], got shape {tuple(images.shape)}")
    batch, height, width, channels = images.shape
    if batch == 0:
        raise InputError(f"input '{input_name}': the image batch is empty (0 images)")
    if height == 0 or width == 0:
        raise InputError(f"input '{input_name}': the image has zero size ({height} x {width})")
    warnings: list[str] = []
    mapping = {4: "drop_alpha", 2: "gray_alpha"}.get(channels, "direct")
    if channels not in (1, 2, 3, 4):
        raise InputError(f"input '{input_name}': {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    if mapping == "drop_alpha":
        warnings.append(f"input '{input_name}': RGBA image, alpha channel dropped")
    if mapping == "gray_alpha":
        warnings.append(f"input '{input_name}': gray + alpha image, alpha channel dropped")
    colour = 3 if channels in (3, 4) else 1
    if colour != in_channels:
        if colour == 1 and in_channels == 3:
            mapping = "replicate" if mapping == "direct" else "gray_alpha_replicate"
            warnings.append(f"input '{input_name}': grayscale image replicated to the model's 3 channels")
        elif colour == 3 and in_channels == 1:
            mapping = "luma" if mapping == "direct" else "drop_alpha_luma"
            warnings.append(f"input '{input_name}': RGB image converted to luminance for a 1-channel model")
        else:
            raise InputError(f"input '{input_name}': a {colour}-channel image cannot feed a model "
                             f"with {in_channels} input channels")
    if not values:
        return InputPlan(1.0, False, mapping, tuple(warnings))
    return _inspect_values(images, mapping, warnings, input_name, rows_per_chunk)


def _value_stats(images: torch.Tensor, rows_per_chunk: int) -> tuple[float, float, int]:
    """(min, max, count of non-finite values) of a float IMAGE, in row chunks (bounded temporaries).

    The running figures stay tensors on the images' device, so a GPU copy is checked with one
    wait at the end instead of one per chunk. Min and max are meaningless when the count is not 0.
    """
    batch, height = images.shape[:2]
    device = images.device
    low = torch.full((), float("inf"), device=device)
    high = torch.full((), float("-inf"), device=device)
    bad = torch.zeros((), dtype=torch.int64, device=device)
    for b in range(batch):
        for y0 in range(0, height, rows_per_chunk):
            chunk = images[b, y0:y0 + rows_per_chunk]
            finite = torch.isfinite(chunk)
            bad = bad + (finite.numel() - finite.sum())
            low = torch.minimum(low, chunk.amin().float())
            high = torch.maximum(high, chunk.amax().float())
    return float(low), float(high), int(bad)


def _inspect_values(images: torch.Tensor, mapping: str, warnings: list[str], input_name: str,
                    rows_per_chunk: int) -> InputPlan:
    if not images.is_floating_point():
        if images.dtype == torch.bool:
            return InputPlan(1.0, False, mapping, tuple(warnings))
        scale = 255.0 if images.dtype == torch.uint8 else 65535.0
        warnings.append(f"input '{input_name}': integer pixels ({images.dtype}) scaled by 1/{scale:.0f}")
        return InputPlan(scale, True, mapping, tuple(warnings))
    low, high, bad = _value_stats(images, rows_per_chunk)
    if bad:
        raise InputError(f"input '{input_name}': {bad} NaN or infinite pixel value(s); fix the upstream node "
                         "(the image cannot be segmented with undefined pixels)")
    scale = 1.0
    if high > 1.5:
        if high <= 255.0:
            scale = 255.0
            warnings.append(f"input '{input_name}': values up to {high:g} look like 8-bit pixels; scaled by 1/255")
        elif high <= 65535.0:
            scale = 65535.0
            warnings.append(f"input '{input_name}': values up to {high:g} look like 16-bit pixels; scaled by 1/65535")
        else:
            raise InputError(f"input '{input_name}': pixel values up to {high:g}; an IMAGE holds 0..1")
    clamp = low < 0.0 or high / scale > 1.0
    if clamp:
        warnings.append(f"input '{input_name}': values in [{low:g}, {high:g}] outside 0..1 after scaling; clamped")
    return InputPlan(scale, clamp, mapping, tuple(warnings))


def to_model_input(pixels: torch.Tensor, plan: InputPlan, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """IMAGE pixels [h, w, C] -> normalised model input [C', h, w] float32."""
    x = pixels.float()
    if plan.scale != 1.0:
        x = x / plan.scale
    if plan.clamp:
        x = x.clamp(0.0, 1.0)
    mapping = plan.channel_map
    if mapping.startswith("drop_alpha"):
        x = x[..., :3]
    elif mapping.startswith("gray_alpha"):
        x = x[..., :1]
    if mapping.endswith("replicate"):
        x = x.expand(*x.shape[:-1], 3)
    elif mapping.endswith("luma"):
        x = (x * torch.tensor(LUMA, dtype=x.dtype, device=x.device)).sum(-1, keepdim=True)
    x = x.permute(2, 0, 1)
    mean, std = mean.to(x.device), std.to(x.device)
    return ((x - mean[:, None, None]) / std[:, None, None]).contiguous()
