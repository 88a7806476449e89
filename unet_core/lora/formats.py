"""Read LoRA files of every common format into modules keyed by canonical LDM names.

Formats: kohya (``lora_unet_…``, SD1 with diffusers module names, SDXL with LDM names), old
diffusers attention processors (``…processor.to_q_lora.up.weight``), diffusers/PEFT
(``…to_q.lora_A.weight``, optionally under ``unet.`` and ``base_model.model.``), LyCORIS LoCon
(with Tucker ``lora_mid``), LoHa, LoKr, full ``.diff``/``.diff_b``, DoRA ``dora_scale``.
Text-encoder keys are recognised and reported, never applied to the UNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import LoraError
from .keys import ModuleNames, is_text_encoder_prefix, split_key

LORA_ROLES = {"up", "down", "mid"}
LOHA_ROLES = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}
LOKR_ROLES = {"lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}


@dataclass
class LoraModule:
    """One patched UNet module: its tensors by role and where it lands."""

    prefix: str                      # the module's key prefix in the file
    target: str                      # bare LDM module name, e.g. "input_blocks.1.1.proj_in"
    kind: str                        # "lora", "loha", "lokr", "diff" or "bias" (diff_b alone)
    tensors: dict[str, torch.Tensor]
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None
    bias_diff: torch.Tensor | None = None
    keys: list[str] = field(default_factory=list)

    @property
    def weight_key(self) -> str:
        return f"{self.target}.weight"

    @property
    def bias_key(self) -> str:
        return f"{self.target}.bias"

    @property
    def scale(self) -> float:
        """alpha / rank (rank = the down factor's first dimension); 1 without alpha or rank."""
        rank = self.rank
        if self.alpha is None or rank is None:
            return 1.0
        return float(self.alpha) / rank

    @property
    def rank(self) -> int | None:
        t = self.tensors
        if self.kind == "lora":
            return int(t["down"].shape[0])
        if self.kind == "loha":
            return int(t["hada_w1_b"].shape[0])
        if self.kind == "lokr":
            # Only factorised LoKr matrices carry a rank; the w2 factor wins when both are.
            if "lokr_w2_b" in t:
                return int(t["lokr_w2_b"].shape[0])
            if "lokr_w1_b" in t:
                return int(t["lokr_w1_b"].shape[0])
        return None


@dataclass
class ParsedLora:
    """What a LoRA file holds, against one model's module names."""

    modules: list[LoraModule]
    text_encoder_keys: list[str]
    unmatched_keys: list[str]        # keys that name no module of this UNet, or no known tensor
    family_hint: str | None = None
    source: str = "LoRA"

    @property
    def formats(self) -> list[str]:
        return sorted({m.kind for m in self.modules})


def load_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file (safetensors, or a pickled state dict loaded weights-only)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a clear LoraError
        raise LoraError(f"{path.name}: cannot read the LoRA file ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise LoraError(f"{path.name}: not a LoRA state dict (expected a mapping of names to tensors)")
    return dict(data)


def _kind(roles: set[str]) -> str | None:
    if {"up", "down"} <= roles:
        return "lora"
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= roles:
        return "loha"
    has_w1 = "lokr_w1" in roles or {"lokr_w1_a", "lokr_w1_b"} <= roles
    has_w2 = "lokr_w2" in roles or {"lokr_w2_a", "lokr_w2_b"} <= roles
    if has_w1 and has_w2:
        return "lokr"
    if "diff" in roles:
        return "diff"
    if "diff_b" in roles:
        return "bias"
    return None


def check_finite(state_dict: dict[str, torch.Tensor], source: str = "LoRA") -> None:
    """LoraError naming the first key whose tensor holds NaN or inf."""
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            what = "NaN" if bool(torch.isnan(tensor).any()) else "inf"
            raise LoraError(f"{source}: tensor {key!r} holds {what} values; the file is damaged")


def parse_lora(state_dict: dict[str, torch.Tensor], names: ModuleNames, source: str = "LoRA") -> ParsedLora:
    """Group a LoRA state dict by module and map every UNet module onto its LDM name."""
    from .keys import guess_family

    groups: dict[str, dict[str, str]] = {}
    unmatched: list[str] = []
    text_encoder: list[str] = []
    for key in state_dict:
        split = split_key(key)
        if split is None:
            (text_encoder if is_text_encoder_prefix(key) else unmatched).append(key)
            continue
        prefix, role = split
        if is_text_encoder_prefix(prefix):
            text_encoder.append(key)
            continue
        groups.setdefault(prefix, {})[role] = key

    context_dims: list[int] = []
    modules: list[LoraModule] = []
    for prefix, roles in groups.items():
        kind = _kind(set(roles))
        target = names.resolve(prefix)
        keys = sorted(roles.values())
        if kind is None or target is None:
            unmatched.extend(keys)
            continue
        tensors = {r: state_dict[k] for r, k in roles.items() if r not in ("alpha", "dora_scale", "diff_b")}
        alpha = None
        if "alpha" in roles:
            value = state_dict[roles["alpha"]]
            if value.numel() != 1:
                raise LoraError(f"{source}: {roles['alpha']!r} should hold one number, it has shape {list(value.shape)}")
            alpha = float(value.float().item())
            if not math.isfinite(alpha):
                raise LoraError(f"{source}: tensor {roles['alpha']!r} holds {alpha}; the file is damaged")
        module = LoraModule(prefix=prefix, target=target, kind=kind, tensors=tensors, alpha=alpha,
                            dora_scale=state_dict[roles["dora_scale"]] if "dora_scale" in roles else None,
                            bias_diff=state_dict[roles["diff_b"]] if "diff_b" in roles else None, keys=keys)
        if module.bias_diff is not None and module.bias_key not in names.ldm_shapes:
            unmatched.append(roles["diff_b"])
            module.bias_diff = None
            if kind == "bias":
                continue
        modules.append(module)
        if target.endswith(("attn2.to_k", "attn2.to_v")) and kind == "lora" and tensors["down"].ndim == 2:
            context_dims.append(int(tensors["down"].shape[1]))

    hint_keys = list(state_dict)
    return ParsedLora(modules=modules, text_encoder_keys=sorted(text_encoder), unmatched_keys=sorted(unmatched),
                      family_hint=guess_family(hint_keys, context_dims), source=source)
