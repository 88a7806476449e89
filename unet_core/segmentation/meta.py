"""What a segmentation checkpoint says about its model besides the weights.

:class:`SegmentationMeta` (architecture, hyper-parameters, input normalisation, class names,
threshold, class values, source), the two normalisations the pack knows (plain 0..1, ImageNet
mean/std), default class names, and :func:`meta_field` for code that accepts a meta object, a
plain dict or None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .architectures.base import SegmentationUNet

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def plain_normalization(channels: int = 3) -> dict[str, Any]:
    """Images 0..1 fed as they are (milesial and our own models by default)."""
    return {"scale": "0..1", "mean": [0.0] * channels, "std": [1.0] * channels}


def imagenet_normalization() -> dict[str, Any]:
    """Images 0..1 normalised with ImageNet mean/std (smp encoders)."""
    return {"scale": "0..1", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


@dataclass
class SegmentationMeta:
    """What a segmentation checkpoint says about its model besides the weights.

    ``normalization``: ``{"scale": "0..1", "mean": [...], "std": [...]}``: the model takes
    ``(image - mean) / std`` where ``image`` is the ComfyUI IMAGE range 0..1 (pixel / 255).
    ``class_names``: one per output channel (a single ``foreground`` for a binary model with
    one logit channel). ``threshold``: the sigmoid probability that counts as foreground for
    one-channel models. ``class_values``: the mask value of each class (milesial's
    ``mask_values``), None if unknown. ``source``: where the weights came from
    (``unet_lab``, ``milesial``, ``smp``).
    """

    architecture: str
    hparams: dict[str, Any]
    normalization: dict[str, Any] = field(default_factory=plain_normalization)
    class_names: list[str] = field(default_factory=list)
    threshold: float = 0.5
    source: str = "unet_lab"
    class_values: list | None = None

    @classmethod
    def for_model(cls, model: SegmentationUNet, **fields: Any) -> SegmentationMeta:
        """Meta matching ``model``'s config, with default class names and normalisation."""
        meta = cls(architecture=model.config["architecture"], hparams=model.hparams(), **fields)
        if "normalization" not in fields:
            meta.normalization = plain_normalization(model.in_channels)
        if not meta.class_names:
            meta.class_names = default_class_names(model.out_channels)
        return meta

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(images - mean) / std`` for images [B, C, H, W] in 0..1."""
        mean = torch.as_tensor(self.normalization.get("mean", 0.0), dtype=images.dtype, device=images.device)
        std = torch.as_tensor(self.normalization.get("std", 1.0), dtype=images.dtype, device=images.device)
        if mean.ndim == 1:
            mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        return (images - mean) / std


def default_class_names(out_channels: int) -> list[str]:
    """``["foreground"]`` for one logit channel, ``background, class_1, ...`` otherwise."""
    if out_channels == 1:
        return ["foreground"]
    return ["background"] + [f"class_{i}" for i in range(1, out_channels)]


def meta_field(meta: Any, name: str, default: Any) -> Any:
    """``meta.name`` for a meta object, ``meta[name]`` for a dict, ``default`` when missing or None."""
    if meta is None:
        return default
    if isinstance(meta, dict):
        return meta.get(name, default)
    return getattr(meta, name, default)
