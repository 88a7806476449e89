"""milesial/Pytorch-UNet checkpoints (``checkpoint_epoch*.pth``, the Carvana ``unet_carvana`` model).

Their state dict matches :class:`~..architectures.unet.UNet` key for key, so the adapter only
reads the hyper-parameters off the tensor shapes: input channels and width from
``inc.double_conv.0.weight``, classes from ``outc.conv.weight``, depth from the number of
``down{i}`` blocks, and bilinear upsampling from the absence of ``up1.up.weight``.
milesial's training script stores a ``mask_values`` list beside the tensors: the mask value of
each class index, honoured here as the class values. milesial feeds images scaled to 0..1 with
no mean/std.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ...errors import SegmentationError
from ..architectures.base import SegmentationUNet
from ..meta import SegmentationMeta
from ..registry import build_model
from ..weights import load_weights_into
from .registry import CheckpointAdapter, register_adapter

log = logging.getLogger(__name__)

MARKER_KEYS = ("inc.double_conv.0.weight", "outc.conv.weight")


def looks_like_milesial(state: Mapping[str, Any]) -> bool:
    """True when the keys are milesial's (``inc.double_conv.*`` ... ``outc.conv.*``)."""
    return all(k in state for k in MARKER_KEYS)


def milesial_hparams(state: Mapping[str, torch.Tensor], where: str = "") -> dict[str, Any]:
    """The ``build_model("unet", ...)`` hyper-parameters that this state dict fits."""
    try:
        inc = state["inc.double_conv.0.weight"]
        outc = state["outc.conv.weight"]
        depth = 0
        while f"down{depth + 1}.maxpool_conv.1.double_conv.0.weight" in state:
            depth += 1
        if depth == 0:
            raise KeyError("down1.maxpool_conv.1.double_conv.0.weight")
        return {
            "in_channels": int(inc.shape[1]),
            "out_channels": int(outc.shape[0]),
            "depth": depth,
            "base_channels": int(inc.shape[0]),
            "norm": "batch" if "inc.double_conv.1.running_mean" in state else "none",
            "upsampling": "transpose" if "up1.up.weight" in state else "bilinear",
        }
    except (KeyError, IndexError, AttributeError) as exc:
        raise SegmentationError(f"{where}: looks like a milesial Pytorch-UNet state dict but lacks {exc}") from None


def class_values_from(mask_values: Any, out_channels: int, where: str = "") -> list | None:
    """milesial's ``mask_values`` as a plain list (None when absent)."""
    if mask_values is None:
        return None
    if isinstance(mask_values, torch.Tensor):
        mask_values = mask_values.tolist()
    try:
        values = list(mask_values)
    except TypeError:  # a scalar or an object: the class values are unknown, the weights still fit
        log.warning("%s: ignoring mask_values %r (not a list)", where, mask_values)
        return None
    expected = max(out_channels, 2)
    if len(values) != expected:
        log.warning("%s: mask_values has %d entries for a %d-class model", where, len(values), out_channels)
    return values


def read_state_dict(tensors: dict[str, torch.Tensor], extras: dict[str, Any],
                    where: str) -> tuple[SegmentationUNet, SegmentationMeta] | None:
    """A U-Net with these weights and its meta (class values from ``mask_values``); None when not milesial's."""
    if not looks_like_milesial(tensors):
        return None
    hparams = milesial_hparams(tensors, where)
    model = build_model("unet", **hparams)
    load_weights_into(model, tensors, where)
    values = class_values_from(extras.get("mask_values"), hparams["out_channels"], where)
    meta = SegmentationMeta.for_model(model, source="milesial", class_values=values)
    if values is not None and model.out_channels > 1 and len(values) == model.out_channels:
        meta.class_names = [f"value_{v}" for v in values]
    return model, meta


ADAPTER = register_adapter(CheckpointAdapter(
    "milesial", "a milesial Pytorch-UNet state dict (inc.double_conv..., outc.conv...)", read_state_dict=read_state_dict))
