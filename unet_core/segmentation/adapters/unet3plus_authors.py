"""State dicts of the U-Net 3+ authors' code (ZJUGiveLab/UNet-Version, ``models/UNet_3Plus.py``).

Their ``UNet_3Plus``, ``UNet_3Plus_DeepSup`` and ``UNet_3Plus_DeepSup_CGM`` name every module
flat: encoder ``conv{k}.conv{m}.{0,1}`` (``unetConv2``: conv, BatchNorm), decoder branches
``h{a}_PT_hd{b}_{conv,bn}`` (pooled encoder map), ``h{a}_Cat_hd{a}_{conv,bn}`` (same level),
``hd{a}_UT_hd{b}_{conv,bn}`` (up-sampled decoder map), fusions ``conv{b}d_1`` / ``bn{b}d_1``,
heads ``outconv{k}`` and the classification branch ``cls.1``; levels count from 1. This module
renames them to :class:`~..architectures.unet3plus.UNet3Plus` names (levels from 0; no tensor
is copied) and reads the hyper-parameters off the shapes. Their models end in a sigmoid; ours
return the logits before it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ...errors import SegmentationError
from ..architectures.base import SegmentationUNet
from ..meta import SegmentationMeta
from ..registry import build_model
from ..weights import load_weights_into
from .registry import CheckpointAdapter, register_adapter

MARKER_KEYS = ("conv1.conv1.0.weight", "h1_Cat_hd1_conv.weight", "outconv1.weight")

_RULES: tuple[tuple[re.Pattern[str], Any], ...] = (
    (re.compile(r"^conv(\d+)\.conv(\d+)\.([01])\.(.+)$"),
     lambda m: f"encoder.{int(m[1]) - 1}.{int(m[2]) - 1}.{m[3]}.{m[4]}"),
    (re.compile(r"^h(\d+)_(?:PT|Cat)_hd(\d+)_(conv|bn)\.(.+)$"),
     lambda m: f"branches.l{int(m[1]) - 1}_to_d{int(m[2]) - 1}.{0 if m[3] == 'conv' else 1}.{m[4]}"),
    (re.compile(r"^hd(\d+)_UT_hd(\d+)_(conv|bn)\.(.+)$"),
     lambda m: f"branches.l{int(m[1]) - 1}_to_d{int(m[2]) - 1}.{0 if m[3] == 'conv' else 1}.{m[4]}"),
    (re.compile(r"^(conv|bn)(\d+)d_1\.(.+)$"),
     lambda m: f"fusions.d{int(m[2]) - 1}.{0 if m[1] == 'conv' else 1}.{m[3]}"),
    (re.compile(r"^outconv(\d+)\.(.+)$"), lambda m: f"heads.d{int(m[1]) - 1}.{m[2]}"),
    (re.compile(r"^cls\.1\.(.+)$"), lambda m: f"classifier.1.{m[1]}"),
)


def strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` prefix that ``nn.DataParallel`` puts on every key (when all keys have it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def looks_like_unet3plus_authors(state: Mapping[str, Any]) -> bool:
    """True when the keys are the authors' U-Net 3+ names."""
    return all(k in state for k in MARKER_KEYS)


def rename_unet3plus_authors(state: Mapping[str, torch.Tensor], where: str = "") -> dict[str, torch.Tensor]:
    """The authors' state dict under our module names (the same tensors); unknown keys are refused."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, rename in _RULES:
            match = pattern.match(key)
            if match:
                out[rename(match)] = value
                break
        else:
            raise SegmentationError(f"{where}: U-Net 3+ (authors' layout) has an unexpected key {key!r}")
    return out


def unet3plus_authors_hparams(state: Mapping[str, torch.Tensor], where: str = "") -> dict[str, Any]:
    """The ``build_model("unet3plus", ...)`` hyper-parameters that this state dict fits."""
    try:
        first = state["conv1.conv1.0.weight"]
        if "conv1.conv1.1.running_mean" not in state:
            raise SegmentationError(f"{where}: U-Net 3+ without BatchNorm in the encoder (is_batchnorm=False) "
                                    "is not supported")
        levels = 0
        while f"conv{levels + 1}.conv1.0.weight" in state:
            levels += 1
        return {
            "in_channels": int(first.shape[1]),
            "out_channels": int(state["outconv1.weight"].shape[0]),
            "depth": levels - 1,
            "base_channels": int(first.shape[0]),
            "norm": "batch",
            "cat_channels": int(state["h1_Cat_hd1_conv.weight"].shape[0]),
            "deep_supervision": "outconv2.weight" in state,
            "classification_guided": "cls.1.weight" in state,
        }
    except (KeyError, IndexError, AttributeError) as exc:
        raise SegmentationError(f"{where}: looks like a U-Net 3+ state dict (authors' layout) but lacks {exc}") from None


def read_state_dict(tensors: dict[str, torch.Tensor], extras: dict[str, Any],
                    where: str) -> tuple[SegmentationUNet, SegmentationMeta] | None:
    """A ``unet3plus`` model with the authors' weights (renamed), or None when the keys are not theirs."""
    tensors = strip_module_prefix(tensors)
    if not looks_like_unet3plus_authors(tensors):
        return None
    model = build_model("unet3plus", **unet3plus_authors_hparams(tensors, where))
    load_weights_into(model, rename_unet3plus_authors(tensors, where), where)
    return model, SegmentationMeta.for_model(model, source="unet3plus_authors")


ADAPTER = register_adapter(CheckpointAdapter(
    "unet3plus_authors", "a U-Net 3+ state dict of the authors' code (conv1.conv1..., h1_PT_hd4_conv..., outconv1)",
    read_state_dict=read_state_dict))
