"""Weight patches: what ``UNetPatcher.add_patches`` stores and how a patched weight is computed.

Same data and semantics as ComfyUI's ``comfy.lora.calculate_weight``: each key holds a
list of ``(strength_patch, patch, strength_model, offset, function)`` entries applied
in order to a float32 working copy of the weight: ``W <- strength_model * W``, then the
patch: ``("diff", (delta,))`` or ``(delta,)`` adds ``function(strength * delta)``;
``("set", (tensor,))`` replaces the weight; an object with ``calculate_weight`` (the
:class:`WeightAdapter` protocol, like ComfyUI's ``WeightAdapterBase``) returns the new
weight itself. ``offset = (dim, start, length)`` restricts the entry to a slice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

log = logging.getLogger(__name__)

PatchEntry = tuple[float, Any, float, Any, Any]


@runtime_checkable
class WeightAdapter(Protocol):
    """A patch that computes its own patched weight (LoRA, LoHa, LoKr...)."""

    def calculate_weight(self, weight: torch.Tensor, key: str, strength: float, strength_model: float,
                         offset: Any, function: Callable[[torch.Tensor], torch.Tensor] | None,
                         intermediate_dtype: torch.dtype = torch.float32,
                         original_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Return the patched ``weight`` (already scaled by ``strength_model``)."""
        ...


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def calculate_weight(patches: Sequence[PatchEntry], weight: torch.Tensor, key: str,
                     intermediate_dtype: torch.dtype = torch.float32,
                     original_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``patches`` (in order) to ``weight`` and return the result.

    ``weight`` is modified in place where possible: pass a working copy in
    ``intermediate_dtype`` (the patcher does).
    """
    for strength, patch, strength_model, offset, function in patches:
        function = function or _identity
        full = None
        if offset is not None:
            full = weight
            weight = weight.narrow(offset[0], offset[1], offset[2])
        if strength_model != 1.0:
            weight *= strength_model
        if isinstance(patch, WeightAdapter) and not isinstance(patch, (tuple, list)):
            out = patch.calculate_weight(weight, key, strength, strength_model, offset, function,
                                         intermediate_dtype, original_weight)
            if out is None:
                log.warning("patch %s for %s returned nothing; weight left unchanged", type(patch).__name__, key)
            elif full is None:
                weight = out
            elif out is not weight:
                weight.copy_(out)
            if full is not None:
                weight = full
            continue
        if not isinstance(patch, (tuple, list)):
            raise TypeError(f"{key}: unsupported weight patch {type(patch).__name__}")
        if len(patch) == 2 and isinstance(patch[0], str):
            kind, values = patch
        else:
            kind, values = "diff", patch
        if kind == "diff":
            delta = values[0]
            if tuple(delta.shape) != tuple(weight.shape):
                log.warning("%s: patch shape %s does not match weight %s; not merged",
                            key, tuple(delta.shape), tuple(weight.shape))
            elif strength != 0.0:
                weight += function(strength * delta.to(device=weight.device, dtype=weight.dtype))
        elif kind == "set":
            weight.copy_(values[0].to(device=weight.device, dtype=weight.dtype))
        else:
            log.warning("%s: unknown patch type %r; ignored", key, kind)
        if full is not None:
            weight = full
    return weight
