"""The SEG_UNET value that travels between nodes, and the channels of a segmentation model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import SegmentationError
from .meta import meta_field


def model_channels(model: nn.Module) -> tuple[int, int]:
    """(in_channels, out_channels) of a segmentation model, from its config or first/last conv."""
    config = getattr(model, "config", None) or {}
    cin, cout = config.get("in_channels"), config.get("out_channels")
    if cin is None or cout is None:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise SegmentationError("cannot tell the model's channels: no config and no Conv2d")
        cin = cin if cin is not None else convs[0].in_channels
        cout = cout if cout is not None else convs[-1].out_channels
    return int(cin), int(cout)


@dataclass
class SegUNet:
    """The SEG_UNET value: a segmentation model with its checkpoint meta and where it came from."""

    model: nn.Module
    meta: Any
    name: str = ""

    def describe(self) -> str:
        """One line: name, architecture, depth, width, parameter count and class names."""
        config = getattr(self.model, "config", {}) or {}
        params = sum(p.numel() for p in self.model.parameters())
        classes = list(meta_field(self.meta, "class_names", []) or [])
        return (f"{self.name or 'segmentation model'}: {config.get('architecture', type(self.model).__name__)}, "
                f"depth {config.get('depth', '?')}, base {config.get('base_channels', '?')}, "
                f"{params / 1e6:.2f} M parameters, classes {classes}")
