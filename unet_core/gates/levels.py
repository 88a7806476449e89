"""Where the skip connections of an SD-family UNet sit, derived from its config.

The LDM UNet stores one skip per input block and pops them in reverse in the
decoder. With ``n = len(block_out_channels)`` levels and ``L = layers_per_block``:

* input blocks: ``0`` is ``conv_in`` (``ch[0]`` channels, latent resolution);
  level ``i`` adds ``L`` res-blocks (``ch[i]``) and, except the deepest level,
  a downsampler (``ch[i]`` channels, resolution of level ``i + 1``);
  ``1 + n*L + (n-1)`` blocks in all.
* output blocks come in groups of ``L + 1`` per level, deepest level first:
  output block ``k`` belongs to level ``n - 1 - k // (L + 1)`` at position
  ``k % (L + 1)``, runs at ``1 / 2**level`` of the latent resolution
  (``1 / (8 * 2**level)`` of the image), and receives the skip of input block
  ``N_in - 1 - k``. Its decoder input ``h`` comes from the middle block (``k = 0``)
  or from output block ``k - 1`` (``ch[level(k - 1)]`` channels).

Level indices follow ``block_out_channels``: level 0 is the finest (latent
resolution), level ``n - 1`` the deepest. Nothing here hard-codes a channel count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..errors import GateError

# The VAE of the SD family downsamples images 8x into the latent.
LATENT_FACTOR = 8


@dataclass(frozen=True)
class SkipBlock:
    """One output block's skip connection."""

    block_id: int          # output block index (transformer_options["block"][1])
    level: int             # 0 = finest (latent resolution) ... n-1 = deepest
    position: int          # index inside its level's group of L + 1 blocks
    input_block: int       # the input block whose output is the skip
    skip_channels: int     # channels of hsp
    gating_channels: int   # channels of h
    downscale: int         # latent size / this block's size (2**level)

    @property
    def image_factor(self) -> Fraction:
        """Resolution relative to the image, e.g. 1/8 at the latent's own resolution."""
        return Fraction(1, LATENT_FACTOR * self.downscale)

    @property
    def key(self) -> str:
        """The trained-weight key prefix of this block: ``level{N}.{position}``."""
        return f"level{self.level}.{self.position}"


@dataclass(frozen=True)
class SkipLayout:
    """The two config fields the skip layout depends on."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int


def skip_layout(config: Any) -> SkipLayout:
    """Read the layout from a UNetConfig (both hosts' ``model_info`` give one; ComfyUI's own
    ``unet_config`` dict is converted by ``diffusion.ldm_config.config_from_ldm_unet_config``)."""
    try:
        channels = tuple(int(c) for c in config.block_out_channels)
        layers = int(config.layers_per_block)
    except (AttributeError, TypeError, ValueError) as exc:
        raise GateError(f"cannot read the UNet layout (block_out_channels, layers_per_block) from the model "
                        f"config ({type(exc).__name__}: {exc})") from exc
    if not channels or layers < 1:
        raise GateError(f"model config has no levels (block_out_channels={channels}, layers_per_block={layers})")
    return SkipLayout(channels, layers)


def _config_fields(config: Any) -> tuple[tuple[int, ...], int]:
    layout = skip_layout(config)
    return layout.block_out_channels, layout.layers_per_block


def input_block_channels(config: Any) -> list[tuple[int, int]]:
    """``(channels, downscale)`` of every input block's output, in order."""
    channels, layers = _config_fields(config)
    blocks = [(channels[0], 1)]
    for level, ch in enumerate(channels):
        blocks += [(ch, 2 ** level)] * layers
        if level < len(channels) - 1:
            blocks.append((ch, 2 ** (level + 1)))
    return blocks


def skip_blocks(config: Any) -> list[SkipBlock]:
    """Every output block's skip connection, in output-block order."""
    channels, layers = _config_fields(config)
    inputs = input_block_channels(config)
    n_levels, group = len(channels), layers + 1
    blocks: list[SkipBlock] = []
    for k in range(n_levels * group):
        level = n_levels - 1 - k // group
        source = len(inputs) - 1 - k
        skip_ch, downscale = inputs[source]
        if downscale != 2 ** level:  # cannot happen for a config of this layout
            raise GateError(f"output block {k}: skip resolution 1/{downscale} does not match level {level}")
        gating = channels[-1] if k == 0 else channels[n_levels - 1 - (k - 1) // group]
        blocks.append(SkipBlock(k, level, k % group, source, skip_ch, gating, downscale))
    return blocks


# -- user selections ---------------------------------------------------------------------

_FRACTION = re.compile(r"^1\s*/\s*(\d+)$")


def _resolve_level(token: str, n_levels: int, what: str) -> int:
    """A level index (``2``, ``L2``, ``level2``) or an image resolution factor (``1/16``)."""
    text = token.strip().lower()
    match = _FRACTION.match(text)
    if match:
        denominator = int(match.group(1))
        factors = {LATENT_FACTOR * 2 ** i: i for i in range(n_levels)}
        if denominator not in factors:
            known = ", ".join(f"1/{d}" for d in sorted(factors))
            raise GateError(f"{what}: no level runs at {token.strip()} of the image; this model has {known}")
        return factors[denominator]
    text = text.removeprefix("level").removeprefix("l").strip()
    if text.isdigit():
        level = int(text)
        if level >= n_levels:
            raise GateError(f"{what}: level {level} does not exist; this model has levels 0..{n_levels - 1}")
        return level
    raise GateError(f"{what}: cannot read {token.strip()!r}; use 'all', a level index (0 = finest) "
                    f"or a resolution factor such as 1/8")


def parse_levels(text: str, config: Any, what: str = "levels") -> tuple[int, ...]:
    """The levels named by ``text``: ``all``, or a comma list of indices / factors."""
    n_levels = len(_config_fields(config)[0])
    text = (text or "").strip()
    if text.lower() in ("", "all", "*"):
        return tuple(range(n_levels))
    levels = {_resolve_level(tok, n_levels, what) for tok in text.replace(";", ",").split(",") if tok.strip()}
    if not levels:
        raise GateError(f"{what}: no level selected by {text!r}")
    return tuple(sorted(levels))


def parse_level_strengths(text: str, config: Any, what: str = "level_strengths") -> tuple[float, ...]:
    """Per-level multipliers, one per level (finest first); default 1.0 each.

    Either named entries ``"1/8=1.0, 1/16=0.5"`` / ``"0=1, 3=0.2"`` (unnamed levels stay
    1.0), or a plain list of exactly one value per level, finest first.
    """
    n_levels = len(_config_fields(config)[0])
    values = [1.0] * n_levels
    text = (text or "").strip()
    if not text:
        return tuple(values)
    items = [tok.strip() for tok in text.replace(";", ",").split(",") if tok.strip()]

    def number(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise GateError(f"{what}: {raw.strip()!r} is not a number") from None
        if not 0.0 <= value <= 10.0:
            raise GateError(f"{what}: {value} is outside 0..10")
        return value

    if all("=" in item for item in items):
        for item in items:
            name, raw = item.split("=", 1)
            values[_resolve_level(name, n_levels, what)] = number(raw)
        return tuple(values)
    if any("=" in item for item in items):
        raise GateError(f"{what}: mix of named (a=b) and positional values in {text!r}")
    if len(items) != n_levels:
        raise GateError(f"{what}: {len(items)} positional values given, this model has {n_levels} levels "
                        f"(finest first); or name them, e.g. '1/8=1, 1/16=0.5'")
    return tuple(number(item) for item in items)


def describe_blocks(blocks: list[SkipBlock], strengths: dict[int, float] | None = None) -> str:
    """A human-readable table of the skip blocks (and the strength each gets)."""
    lines = ["output block | level | resolution | skip ch | gating ch" + (" | strength" if strengths else "")]
    for b in blocks:
        row = f"{b.block_id:>12} | {b.level:>5} | {str(b.image_factor):>10} | {b.skip_channels:>7} | {b.gating_channels:>9}"
        if strengths:
            row += f" | {strengths.get(b.block_id, 0.0):g}"
        lines.append(row)
    return "\n".join(lines)
