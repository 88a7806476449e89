"""Delta W of each LoRA format, and patch objects that add it to a weight.

Formulas (LoRA paper; LyCORIS docs; ComfyUI's weight adapters agree):
- LoRA / LoCon: ``up @ down`` (flattened to matrices), times alpha / rank.
- LoCon Tucker: ``dW[o,i,h,w] = sum_{m,n} up[o,m] mid[m,n,h,w] down[n,i]``.
- LoHa: ``(w1a @ w1b) * (w2a @ w2b)`` (Hadamard), with CP factors
  ``W = einsum('rskl,ro,si->oikl', t, wa, wb)`` when ``hada_t1/t2`` are present.
- LoKr: ``kron(w1, w2)`` where each factor is given whole or as ``a @ b`` (w2 possibly Tucker).
- ``.diff``: the delta itself; ``.diff_b``: the bias delta.
- DoRA: the merged weight ``W + dW`` rescaled so its norm along the ``dora_scale`` axis equals
  ``dora_scale``; strength s blends ``W + s (W_dora - W)``.
The result is reshaped to the target weight's shape, which covers linear vs 1x1 conv LoRAs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import LoraError
from .formats import LoraModule


def _f(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return t.to(device=device, dtype=dtype)


def _cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Rebuild a conv weight from a CP/Tucker core ``t`` [r, s, kh, kw], ``wa`` [r, out], ``wb`` [s, in]."""
    return torch.einsum("rskl,ro,si->oikl", t, wa, wb)


def raw_delta_shape(module: LoraModule) -> tuple[int, ...]:
    """The shape the module's factors produce before reshaping (for fit checks, no math)."""
    t = module.tensors
    if module.kind == "lora":
        up, down = t["up"], t["down"]
        if "mid" in t:
            return (up.shape[0], down.shape[1], *t["mid"].shape[2:])
        return (up.shape[0], *down.shape[1:]) if down.ndim > 2 else (up.shape[0], down.shape[1])
    if module.kind == "loha":
        if "hada_t1" in t:
            return (t["hada_w1_a"].shape[1], t["hada_w1_b"].shape[1], *t["hada_t1"].shape[2:])
        return (t["hada_w1_a"].shape[0], t["hada_w1_b"].shape[1])
    if module.kind == "lokr":
        w1 = t["lokr_w1"].shape if "lokr_w1" in t else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
        if "lokr_w2" in t:
            w2 = tuple(t["lokr_w2"].shape)
        elif "lokr_t2" in t:
            w2 = (t["lokr_w2_a"].shape[1], t["lokr_w2_b"].shape[1], *t["lokr_t2"].shape[2:])
        else:
            w2 = (t["lokr_w2_a"].shape[0], t["lokr_w2_b"].shape[1])
        return (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])
    if module.kind == "diff":
        return tuple(t["diff"].shape)
    raise LoraError(f"{module.prefix}: no weight delta in a {module.kind} module")


def _inner_check(module: LoraModule) -> None:
    """The factors of a module must chain (up's rank == down's rank, …)."""
    t = module.tensors
    pairs: list[tuple[str, str, int, int]] = []
    if module.kind == "lora":
        pairs.append(("up", "down", t["up"].shape[1], t["down"].shape[0]))
        if "mid" in t:
            pairs.append(("mid", "down", t["mid"].shape[1], t["down"].shape[0]))
    elif module.kind == "loha":
        if "hada_t1" not in t:
            pairs.append(("hada_w1_a", "hada_w1_b", t["hada_w1_a"].shape[1], t["hada_w1_b"].shape[0]))
            pairs.append(("hada_w2_a", "hada_w2_b", t["hada_w2_a"].shape[1], t["hada_w2_b"].shape[0]))
    elif module.kind == "lokr":
        if "lokr_w1_a" in t and "lokr_w1" not in t:
            pairs.append(("lokr_w1_a", "lokr_w1_b", t["lokr_w1_a"].shape[1], t["lokr_w1_b"].shape[0]))
        if "lokr_w2_a" in t and "lokr_w2" not in t and "lokr_t2" not in t:
            pairs.append(("lokr_w2_a", "lokr_w2_b", t["lokr_w2_a"].shape[1], t["lokr_w2_b"].shape[0]))
    for a, b, na, nb in pairs:
        if na != nb:
            raise LoraError(f"{module.prefix}: {a} {list(t[a].shape)} and {b} {list(t[b].shape)} do not chain "
                            f"(rank {na} vs {nb})")


def check_fits(module: LoraModule, weight_shape: tuple[int, ...], source: str = "LoRA") -> None:
    """LoraError naming the module and both shapes unless its delta fits the target weight."""
    if module.kind == "bias":
        return
    _inner_check(module)
    shape = raw_delta_shape(module)
    if math.prod(shape) != math.prod(weight_shape) or shape[0] != weight_shape[0]:
        raise LoraError(f"{source}: {module.prefix} (-> {module.weight_key}) gives a delta of shape {list(shape)} "
                        f"but the model's weight has shape {list(weight_shape)}")


def module_delta(module: LoraModule, shape: tuple[int, ...] | torch.Size, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """alpha/rank-scaled delta W of ``module``, reshaped to ``shape``."""
    t = module.tensors
    device = device or torch.device("cpu")
    if module.kind == "lora":
        up, down = _f(t["up"], device, dtype), _f(t["down"], device, dtype)
        if "mid" in t:
            mid = _f(t["mid"], device, dtype)
            delta = torch.einsum("om,mnkl,ni->oikl", up.flatten(1), mid, down.flatten(1))
        else:
            delta = up.flatten(1) @ down.flatten(1)
    elif module.kind == "loha":
        w1a, w1b = _f(t["hada_w1_a"], device, dtype), _f(t["hada_w1_b"], device, dtype)
        w2a, w2b = _f(t["hada_w2_a"], device, dtype), _f(t["hada_w2_b"], device, dtype)
        if "hada_t1" in t:
            m1 = _cp(_f(t["hada_t1"], device, dtype), w1a, w1b)
            m2 = _cp(_f(t["hada_t2"], device, dtype), w2a, w2b)
        else:
            m1, m2 = w1a @ w1b, w2a @ w2b
        delta = m1 * m2
    elif module.kind == "lokr":
        w1 = _f(t["lokr_w1"], device, dtype) if "lokr_w1" in t else \
            _f(t["lokr_w1_a"], device, dtype) @ _f(t["lokr_w1_b"], device, dtype)
        if "lokr_w2" in t:
            w2 = _f(t["lokr_w2"], device, dtype)
        elif "lokr_t2" in t:
            w2 = _cp(_f(t["lokr_t2"], device, dtype), _f(t["lokr_w2_a"], device, dtype),
                     _f(t["lokr_w2_b"], device, dtype))
        else:
            w2 = _f(t["lokr_w2_a"], device, dtype) @ _f(t["lokr_w2_b"], device, dtype)
        if w2.ndim == 4 and w1.ndim == 2:
            w1 = w1[:, :, None, None]
        delta = torch.kron(w1, w2)
    elif module.kind == "diff":
        delta = _f(t["diff"], device, dtype)
    else:
        raise LoraError(f"{module.prefix}: no weight delta in a {module.kind} module")
    return (delta * module.scale).reshape(shape)


def dora_merge(weight: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor, strength: float) -> torch.Tensor:
    """DoRA: rescale ``W + dW`` to the magnitude ``dora_scale``; blend by ``strength``."""
    merged = weight + delta
    scale = dora_scale.to(merged.dtype)
    if scale.shape[0] == merged.shape[0] and scale.numel() == merged.shape[0]:
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (merged.ndim - 1))
        scale = scale.reshape(norm.shape)
    else:  # LyCORIS default: one magnitude per input column, dora_scale [1, in, ...]
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, -1, *[1] * (merged.ndim - 2))
        scale = scale.reshape(norm.shape)
    rescaled = merged * (scale / (norm + torch.finfo(merged.dtype).eps))
    return weight + strength * (rescaled - weight)


class DeltaPatch:
    """A weight patch in ComfyUI's adapter protocol: ``calculate_weight`` returns the patched weight."""

    def __init__(self, module: LoraModule) -> None:
        self.module = module
        self.name = module.kind

    def calculate_weight(self, weight: torch.Tensor, key: str, strength: float, strength_model: float,
                         offset: object, function: Callable[[torch.Tensor], torch.Tensor] | None,
                         intermediate_dtype: torch.dtype = torch.float32,
                         original_weight: torch.Tensor | None = None) -> torch.Tensor:
        function = function or (lambda a: a)
        delta = module_delta(self.module, weight.shape, weight.device, intermediate_dtype)
        if self.module.dora_scale is not None:
            merged = dora_merge(weight.to(intermediate_dtype), delta,
                                self.module.dora_scale.to(weight.device, intermediate_dtype), strength)
            return function(merged).to(weight.dtype)
        return weight + function((strength * delta).to(weight.dtype))

    def __repr__(self) -> str:
        return f"DeltaPatch({self.module.kind} {self.module.prefix} -> {self.module.weight_key})"


def module_patches(module: LoraModule, prefix: str = "diffusion_model.") -> dict[str, object]:
    """The patches one module contributes, keyed like ComfyUI's model state dict."""
    patches: dict[str, object] = {}
    if module.kind != "bias":
        if module.kind == "diff" and module.dora_scale is None:
            patches[prefix + module.weight_key] = ("diff", (module.tensors["diff"],))
        else:
            patches[prefix + module.weight_key] = DeltaPatch(module)
    if module.bias_diff is not None:
        patches[prefix + module.bias_key] = ("diff", (module.bias_diff,))
    return patches
