"""Block maps and block-weight specs for SD-family UNets.

Blocks follow sd-webui-lora-block-weight's naming: ``IN00``… (LDM ``input_blocks.N``),
``M00`` (``middle_block``), ``OUT00``… (``output_blocks.N``) and ``BASE`` (the text encoder
and any key outside those blocks: ``time_embed``, ``label_emb``, ``out``). Block counts come
from the config, so SD1/SD2 get IN00–IN11/OUT00–OUT11 and SDXL IN00–IN08/OUT00–OUT08.

A spec is either a positional vector of the lengths users already have (SD1 17 or 26 values,
SDXL 12 or 20; the short form lists BASE plus the blocks that hold attention and leaves the
others at 1, as sd-webui-lora-block-weight does) or a named form::

    default=1, IN04=0.5, OUT03-05=0.2, M00=0      # also IN=0, OUT=0, MID=0, BASE=0
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import BlockSpecError
from ..unet_config import UNetConfig

# Presets: sd-webui-lora-block-weight's (17 values, SD1) and ComfyUI Inspire Pack's lbw-preset.txt
# (SD-* 17 values; SDXL-* 12 values). Presets with variables (R, A, B) are not carried over.
_SD17 = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
    "MIDD0.2": "1,0,0,0,0,0,0.2,0.4,0.4,0.2,0,0,0,0,0,0,0",
    "MIDD0.8": "1,0,0,0,0,0.5,0.8,0.8,0.4,0,0,0,0,0,0,0,0",
    "MOUT": "1,0,0,0,0,0,1,1,1,1,1,1,1,1,0.5,0,0",
}
_SDXL12 = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1",
    "INALL": "1,1,1,1,1,0,0,0,0,0,0,0",
    "MIDALL": "1,0,0,0,0,1,0,0,0,0,0,0",
    "OUTALL": "1,0,0,0,0,0,1,1,1,1,1,1",
}
PRESETS: dict[str, str] = {**{f"SD-{k}": v for k, v in _SD17.items()},
                           **{f"SDXL-{k}": v for k, v in _SDXL12.items()}}
NO_PRESET = "none (use block spec)"

_BLOCK_RE = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)")


def block_of(ldm_key: str) -> str:
    """The block a bare LDM key (module or parameter) belongs to: ``IN04``, ``M00``, ``OUT11`` or ``BASE``."""
    key = ldm_key[len("diffusion_model."):] if ldm_key.startswith("diffusion_model.") else ldm_key
    m = _BLOCK_RE.match(key)
    if m is None:
        return "BASE"
    kind, index = m.group(1), int(m.group(2))
    if kind == "middle_block":
        return "M00"
    return f"{'IN' if kind == 'input_blocks' else 'OUT'}{index:02d}"


@dataclass(frozen=True)
class BlockLayout:
    """The blocks of one UNet config, in vector order."""

    n_input: int
    n_output: int
    attention_inputs: tuple[int, ...]
    attention_outputs: tuple[int, ...]

    @classmethod
    def from_config(cls, config: UNetConfig) -> BlockLayout:
        layers = config.layers_per_block
        levels = config.num_levels
        n_input = 1 + levels * layers + (levels - 1)        # conv_in, resnets(+attn), downsamplers
        n_output = levels * (layers + 1)
        att_in = tuple(1 + level * (layers + 1) + j for level in config.attention_levels() for j in range(layers))
        att_out = tuple(up * (layers + 1) + j for up in range(levels)
                        if (levels - 1 - up) in config.attention_levels() for j in range(layers + 1))
        return cls(n_input, n_output, att_in, att_out)

    @property
    def inputs(self) -> list[str]:
        return [f"IN{i:02d}" for i in range(self.n_input)]

    @property
    def outputs(self) -> list[str]:
        return [f"OUT{i:02d}" for i in range(self.n_output)]

    @property
    def full(self) -> list[str]:
        """BASE, every input block, M00, every output block (26 for SD1, 20 for SDXL)."""
        return ["BASE", *self.inputs, "M00", *self.outputs]

    @property
    def short(self) -> list[str]:
        """BASE and the blocks holding attention (17 for SD1, 12 for SDXL)."""
        return ["BASE", *(f"IN{i:02d}" for i in self.attention_inputs), "M00",
                *(f"OUT{i:02d}" for i in self.attention_outputs)]

    @property
    def blocks(self) -> list[str]:
        return self.full


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BlockSpecError(f"block spec: {where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise BlockSpecError(f"block spec: {where}: {text!r} is not a finite number")
    return value


def _vector(values: list[float], layout: BlockLayout, what: str) -> dict[str, float]:
    weights = dict.fromkeys(layout.full, 1.0)
    if len(values) == len(layout.full):
        return dict(zip(layout.full, values, strict=True))
    if len(values) == len(layout.short):
        weights.update(zip(layout.short, values, strict=True))
        return weights
    raise BlockSpecError(
        f"{what}: a vector of {len(values)} values does not fit this model; it takes "
        f"{len(layout.short)} values ({', '.join(layout.short)}) or {len(layout.full)} values "
        f"({layout.full[0]}, {layout.full[1]}–{layout.inputs[-1]}, M00, {layout.outputs[0]}–{layout.outputs[-1]})")


def _expand_name(name: str, layout: BlockLayout) -> list[str]:
    """Blocks a single name or range stands for (``IN04``, ``OUT03-05``, ``OUT03-OUT05``)."""
    upper = name.strip().upper()
    m = re.fullmatch(r"(IN|OUT)(\d+)\s*-\s*(?:(IN|OUT))?(\d+)", upper)
    if m:
        kind, start, kind2, stop = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        if kind2 is not None and kind2 != kind:
            raise BlockSpecError(f"block spec: range {name!r} must stay within {kind} blocks")
        if stop < start:
            raise BlockSpecError(f"block spec: range {name!r} runs backwards ({kind}{start:02d} > {kind}{stop:02d})")
        names = [f"{kind}{i:02d}" for i in range(start, stop + 1)]
    else:
        m1 = re.fullmatch(r"(IN|OUT|M)(\d+)", upper)
        names = [f"{m1.group(1)}{int(m1.group(2)):02d}"] if m1 else [upper]
    known = set(layout.full)
    for block in names:
        if block not in known:
            raise BlockSpecError(f"block spec: unknown block {block!r} in {name!r}; this model has "
                                 f"BASE, {layout.inputs[0]}–{layout.inputs[-1]}, M00, "
                                 f"{layout.outputs[0]}–{layout.outputs[-1]} (groups: IN, OUT, MID)")
    return names


_GROUPS = {"IN": "inputs", "OUT": "outputs"}


def parse_block_spec(spec: str | None, layout: BlockLayout, preset: str | None = None) -> dict[str, float]:
    """Block weights {block: weight} for every block of ``layout`` (and BASE).

    ``preset`` (a key of PRESETS) gives the starting vector; ``spec`` then replaces it (a
    positional vector) or overrides it (named form). Precedence in the named form:
    ``default`` < groups (``IN``, ``OUT``, ``MID``) < single blocks and ranges; a block named
    twice at the same level is an error.
    """
    weights = dict.fromkeys(layout.full, 1.0)
    if preset and preset != NO_PRESET:
        if preset not in PRESETS:
            raise BlockSpecError(f"unknown block-weight preset {preset!r}; known: {', '.join(PRESETS)}")
        values = [float(v) for v in PRESETS[preset].split(",")]
        weights = _vector(values, layout, f"preset {preset}")
    text = "\n".join(line.split("#", 1)[0] for line in (spec or "").splitlines()).strip()
    if not text:
        return weights
    items = [item.strip() for item in re.split(r"[,;\n]", text) if item.strip()]
    if all("=" not in item and ":" not in item for item in items):
        values = [_number(v, f"value {i + 1}") for i, v in enumerate(re.split(r"[,;\s]+", text)) if v]
        return _vector(values, layout, "block spec")
    default: float | None = None
    groups: dict[str, float] = {}
    singles: dict[str, float] = {}
    for item in items:
        if "=" not in item and ":" not in item:
            raise BlockSpecError(f"block spec: {item!r} is neither NAME=value nor part of a vector of numbers")
        name, value_text = re.split(r"[=:]", item, maxsplit=1)
        name = name.strip()
        value = _number(value_text.strip(), name or "?")
        upper = name.upper()
        if not name:
            raise BlockSpecError(f"block spec: {item!r} names no block")
        if upper == "DEFAULT":
            if default is not None:
                raise BlockSpecError("block spec: 'default' is given twice")
            default = value
        elif upper in ("IN", "OUT", "MID", "M"):
            group = "MID" if upper in ("MID", "M") else upper
            if group in groups:
                raise BlockSpecError(f"block spec: group {group} is given twice")
            groups[group] = value
        else:
            blocks = ["M00"] if upper == "M00" else ["BASE"] if upper == "BASE" else _expand_name(name, layout)
            for block in blocks:
                if block in singles:
                    raise BlockSpecError(f"block spec: block {block} is named twice (in {item!r})")
                singles[block] = value
    if default is not None:
        weights = dict.fromkeys(layout.full, default)
    for group, value in groups.items():
        members = ["M00"] if group == "MID" else getattr(layout, _GROUPS[group])
        weights.update(dict.fromkeys(members, value))
    weights.update(singles)
    return weights


def presets_for(layout: BlockLayout) -> list[str]:
    """Preset names whose vectors fit ``layout``."""
    fits = []
    for name, text in PRESETS.items():
        if len(text.split(",")) in (len(layout.short), len(layout.full)):
            fits.append(name)
    return fits
