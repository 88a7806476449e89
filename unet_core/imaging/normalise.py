"""Turn an :class:`~.reading.ImageStack` into a ComfyUI IMAGE: channel choice and intensity normalisation.

Channel choice: ``"all"`` keeps the colour channels (grayscale is repeated to three channels, a
two-channel image gets a zero third channel, RGBA drops alpha); ``"0"``..``"3"`` takes one
channel and repeats it to three (the IMAGE type has three).

Normalisation maps the native values to 0..1 floats, per channel over all pages of the stack
(so the pages of a z-stack or time series stay comparable):

- ``"none"``: value / the sample type's full scale (255, 65535, 2**32 - 1; float as is, so
  values outside 0..1 stay outside);
- ``"min-max"``: (value - min) / (max - min): the full range found, nothing clipped;
- ``"percentile"``: (value - p_low) / (p_high - p_low) with the ``low`` and ``high``
  percentiles (1 and 99.8 as microscopy tools use), then clipped to 0..1: the brightest and
  darkest outliers saturate, which is what this choice asks for.

A constant channel maps to 0 under min-max and percentile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .reading import ImageStack

NORMALISATIONS = ("percentile", "min-max", "none")
CHANNELS = ("all", "0", "1", "2", "3")


@dataclass
class Normalised:
    """The IMAGE [pages, H, W, 3] float32 and what was done, for the node's report."""

    image: torch.Tensor
    channel: str
    method: str
    lows: list[float]
    highs: list[float]

    def describe(self) -> str:
        ranges = ", ".join(f"{lo:g}..{hi:g}" for lo, hi in zip(self.lows, self.highs, strict=True))
        return f"channel {self.channel}, normalisation {self.method}: mapped {ranges} to 0..1"


def choose_channels(pixels: np.ndarray, channel: str, source: str = "image") -> np.ndarray:
    """[P, H, W, C] -> [P, H, W, 3] (see the module docstring); InputError for a channel the image lacks."""
    if channel not in CHANNELS:
        raise InputError(f"{source}: channel {channel!r} is not one of {list(CHANNELS)}")
    count = pixels.shape[-1]
    if channel != "all":
        index = int(channel)
        if index >= count:
            raise InputError(f"{source}: channel {index} asked for, but the image has {count} channel(s) "
                             f"(0..{count - 1})")
        return np.repeat(pixels[..., index:index + 1], 3, axis=-1)
    if count == 1:
        return np.repeat(pixels, 3, axis=-1)
    if count == 2:
        return np.concatenate([pixels, np.zeros_like(pixels[..., :1])], axis=-1)
    return pixels[..., :3]


def normalise(stack: ImageStack, method: str = "percentile", channel: str = "all", low: float = 1.0,
              high: float = 99.8) -> Normalised:
    """The stack as IMAGE [pages, H, W, 3] float32 (see the module docstring)."""
    name = stack.path.rsplit("/", 1)[-1]
    if method not in NORMALISATIONS:
        raise InputError(f"{name}: normalisation {method!r} is not one of {list(NORMALISATIONS)}")
    if method == "percentile" and not 0.0 <= low < high <= 100.0:
        raise InputError(f"{name}: percentiles must satisfy 0 <= low < high <= 100 (got {low}, {high})")
    chosen = choose_channels(stack.pixels, channel, name)
    values = chosen.astype(np.float64 if stack.bit_depth > 16 else np.float32)
    flat = values.reshape(-1, 3)
    if method == "none":
        scale = stack.full_scale()
        lows, highs = [0.0] * 3, [scale] * 3
    elif method == "min-max":
        lows, highs = flat.min(axis=0).tolist(), flat.max(axis=0).tolist()
    else:
        lows, highs = (np.percentile(flat, [low, high], axis=0)).tolist()
    lo = np.asarray(lows, dtype=values.dtype)
    span = np.asarray(highs, dtype=values.dtype) - lo
    out = np.where(span > 0, (values - lo) / np.where(span > 0, span, 1), 0.0)
    if method == "percentile":
        out = np.clip(out, 0.0, 1.0)
    image = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
    return Normalised(image, channel, method, [float(v) for v in lows], [float(v) for v in highs])
