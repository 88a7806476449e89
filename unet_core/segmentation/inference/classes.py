"""Class choice: which probability planes and masks a segmentation run returns.

Modes: ``"foreground"`` (binary: the sigmoid; multi-class: 1 - P(class 0), mask where that
reaches the threshold), ``"class:<name or index>"`` (that class's probability; mask by argmax,
or by the threshold when one is given), ``"all"`` (every class as its own plane, masks by
argmax).
"""

from __future__ import annotations

import torch

from ...errors import InputError


def resolve_class_mode(class_mode: str, classes: int, class_names: list[str]) -> tuple[str, int | None]:
    """("foreground" | "class" | "all", class index or None)."""
    mode = (class_mode or "foreground").strip()
    if mode in ("foreground", "all"):
        return mode, None
    if mode.startswith("class:"):
        key = mode[len("class:"):].strip()
        if key.lstrip("-").isdigit():
            index = int(key)
        elif key in class_names:
            index = class_names.index(key)
        elif classes == 1 and key in ("foreground", "fg"):
            index = 0
        else:
            raise InputError(f"class_mode {class_mode!r}: no class named {key!r}; classes: {class_names}")
        if not 0 <= index < classes:
            raise InputError(f"class_mode {class_mode!r}: index {index} out of range; the model has "
                             f"{classes} output class(es): {class_names}")
        return "class", index
    raise InputError(f"class_mode {class_mode!r}: expected 'foreground', 'all' or 'class:<name or index>'")


def class_planes(probs: torch.Tensor, mode: str, index: int | None, threshold: float,
            explicit_threshold: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [K, h, w] -> (probability planes, mask planes) [P, h, w]."""
    classes = probs.shape[0]
    if classes == 1:
        p = probs[:1]
        return p, (p >= threshold).float()
    if mode == "foreground":
        p = (1.0 - probs[0]).clamp(0.0, 1.0)[None]
        return p, (p >= threshold).float()
    labels = probs.argmax(0)
    if mode == "class":
        p = probs[index:index + 1]
        mask = (p >= threshold).float() if explicit_threshold else (labels == index).float()[None]
        return p, mask
    masks = (labels[None] == torch.arange(classes, device=probs.device)[:, None, None]).float()
    return probs, masks
