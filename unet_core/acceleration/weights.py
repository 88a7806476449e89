"""Where a module's weights are: the condition for replaying a graph that reads them.

A captured graph reads each weight at the address it had during capture. Replaying is correct
exactly when every parameter and buffer is still at that address (values changed in place are
read as they are now). Hosts move weights for many reasons: ComfyUI unloads a model to the CPU and
loads it back, re-patches weights for a new LoRA strength into new tensors, or streams them per
layer in low-VRAM mode; the standalone patcher swaps patched tensors in for each call. So the
fingerprint is every tensor's data pointer, read where the forward reads it (a module's
``_parameters`` / ``_buffers`` entry, looked up each time, so replaced tensors are seen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Slot:
    """One weight: the dict that holds it in its module and its name there."""

    table: dict
    name: str


def weight_slots(module: nn.Module) -> list[Slot]:
    """Every parameter and buffer slot of ``module`` and its submodules (each module once)."""
    slots = []
    for sub in module.modules():
        slots.extend(Slot(sub._parameters, n) for n, p in sub._parameters.items() if p is not None)
        slots.extend(Slot(sub._buffers, n) for n, b in sub._buffers.items() if b is not None)
    return slots


class WeightWatch:
    """Fingerprints and residency checks of one module's weights (slots found once)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.slots = weight_slots(module)

    def fingerprint(self) -> tuple[int, ...]:
        """The data pointer of every weight, in slot order (0 for a slot emptied since)."""
        out = []
        for slot in self.slots:
            t = slot.table.get(slot.name)
            out.append(t.data_ptr() if t is not None else 0)
        return tuple(out)

    def residency_problem(self, device: torch.device) -> str | None:
        """Why the weights are not all on ``device`` (a CUDA device), or None when they are."""
        elsewhere: dict[str, int] = {}
        for slot in self.slots:
            t = slot.table.get(slot.name)
            if t is None:
                continue
            if t.device.type == "meta":
                return "some weights are not materialised (meta tensors)"
            if t.device != device:
                elsewhere[str(t.device)] = elsewhere.get(str(t.device), 0) + 1
        if elsewhere:
            where = ", ".join(f"{n} on {d}" for d, n in sorted(elsewhere.items()))
            return f"the weights are not all on {device} ({where}): the model is offloaded or partially loaded"
        return None
