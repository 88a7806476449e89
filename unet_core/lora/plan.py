"""From a LoRA state dict and a model to per-block patch groups and a report.

``plan_lora`` checks everything that can be wrong before any weight is touched (family, NaN/inf,
shapes), then groups the LoRA's patches by block with their effective weight
``strength * block weight``. A host applies the groups through its own model patcher
(``Host.add_lora_patches``): ComfyUI's adapters inside ComfyUI, ``DeltaPatch`` standalone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..errors import FamilyMismatchError
from ..unet_config import UNetConfig
from .blocks import BlockLayout, block_of, parse_block_spec
from .deltas import check_fits, module_patches
from .formats import LoraModule, ParsedLora, check_finite, parse_lora
from .keys import ModuleNames, base_family

MODEL_PREFIX = "diffusion_model."


@dataclass
class BlockGroup:
    """The patches of one block, applied with one strength."""

    block: str
    weight: float                                  # strength * block weight
    block_weight: float
    modules: list[LoraModule] = field(default_factory=list)
    patches: dict[str, object] = field(default_factory=dict)      # model key -> patch (standalone)
    key_map: dict[str, str] = field(default_factory=dict)         # LoRA prefix -> model weight key


@dataclass
class LoraPlan:
    """Everything needed to apply one LoRA to one model, and to tell the user what happened."""

    parsed: ParsedLora
    groups: list[BlockGroup]
    strength: float
    weights: dict[str, float]
    layout: BlockLayout
    family: str | None

    @property
    def key_map(self) -> dict[str, str]:
        """{LoRA key prefix -> "diffusion_model.<ldm weight key>"} over every applied module."""
        out: dict[str, str] = {}
        for group in self.groups:
            out.update(group.key_map)
        return out

    def group_of_key(self, model_key: str) -> str:
        return block_of(model_key)

    def report(self, applied_keys: set[str] | None = None, action: str = "applied") -> str:
        """Per block: modules hit and the weight used; unmatched and text-encoder keys once."""
        p = self.parsed
        lines = [f"{p.source}: {len(p.modules)} UNet modules ({', '.join(p.formats) or 'none'}), "
                 f"strength {self.strength:g}, {action} to a {self.family or 'UNet'} model"]
        for group in self.groups:
            names = sorted(m.target for m in group.modules)
            state = "skipped (weight 0)" if group.weight == 0 else f"weight {group.weight:g}"
            lines.append(f"  {group.block:<5} {len(names):4d} modules  block {group.block_weight:g} -> {state}")
        if applied_keys is not None:
            expected = {k for g in self.groups if g.weight != 0 for k in g.patches}
            missing = sorted(expected - applied_keys)
            if missing:
                lines.append(f"  not taken by the model: {len(missing)} keys, e.g. {', '.join(missing[:5])}")
        untouched = [b for b in self.layout.full if b != "BASE" and b not in {g.block for g in self.groups}]
        if untouched:
            lines.append(f"  blocks the LoRA does not touch: {', '.join(untouched)}")
        if p.text_encoder_keys:
            lines.append(f"  text encoder: {len(p.text_encoder_keys)} keys noted, not applied "
                         f"(this node patches the UNet only; BASE also weights time_embed, label_emb and out)")
        if p.unmatched_keys:
            sample = ", ".join(p.unmatched_keys[:8])
            more = f" (+{len(p.unmatched_keys) - 8} more)" if len(p.unmatched_keys) > 8 else ""
            lines.append(f"  unmatched: {len(p.unmatched_keys)} keys match no module of this UNet: {sample}{more}")
        else:
            lines.append("  unmatched: none")
        return "\n".join(lines)


def model_names(state_shapes: Mapping[str, tuple[int, ...]], config: UNetConfig) -> ModuleNames:
    """Module names of a model: its (bare LDM) parameter shapes plus the diffusers spelling for its config."""
    try:
        from ..checkpoints.keymap import diffusers_to_ldm_keymap

        keymap = diffusers_to_ldm_keymap(config)
    except ImportError:  # the key map ships with the checkpoints package
        keymap = {}
    return ModuleNames(ldm_shapes=dict(state_shapes), diffusers_to_ldm=keymap)


def plan_lora(state_dict: dict[str, torch.Tensor], names: ModuleNames, config: UNetConfig, family: str | None,
              strength: float = 1.0, block_spec: str | None = None, preset: str | None = None,
              source: str = "LoRA") -> LoraPlan:
    """Check a LoRA against a model and group its patches by block (nothing is applied here)."""
    check_finite(state_dict, source)
    parsed = parse_lora(state_dict, names, source)
    model_family = base_family(family)
    hint = parsed.family_hint
    if model_family and hint:
        fits = hint.split("/")
        if model_family not in fits and model_family in ("sd1", "sd2", "sdxl"):
            raise FamilyMismatchError(model_family, hint, what=source)
    layout = BlockLayout.from_config(config)
    weights = parse_block_spec(block_spec, layout, preset)
    groups: dict[str, BlockGroup] = {}
    for module in parsed.modules:
        if module.kind != "bias":
            check_fits(module, tuple(names.ldm_shapes[module.weight_key]), source)
        if module.bias_diff is not None:
            bias_shape = tuple(names.ldm_shapes[module.bias_key])
            if tuple(module.bias_diff.shape) != bias_shape:
                from ..errors import LoraError

                raise LoraError(f"{source}: {module.prefix}.diff_b has shape {list(module.bias_diff.shape)} but "
                                f"the model's {module.bias_key} has shape {list(bias_shape)}")
        block = block_of(module.target)
        bw = weights.get(block, 1.0)
        group = groups.setdefault(block, BlockGroup(block=block, weight=strength * bw, block_weight=bw))
        group.modules.append(module)
        group.patches.update(module_patches(module, MODEL_PREFIX))
        group.key_map[module.prefix] = MODEL_PREFIX + module.weight_key
    order = {b: i for i, b in enumerate(layout.full)}
    ordered = sorted(groups.values(), key=lambda g: order.get(g.block, -1))
    return LoraPlan(parsed=parsed, groups=ordered, strength=strength, weights=weights, layout=layout,
                    family=family)
