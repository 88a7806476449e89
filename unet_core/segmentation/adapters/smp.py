"""Reading segmentation_models_pytorch (smp) Unet / UnetPlusPlus weights (ResNet encoders).

Two forms: an smp state dict (sniffed by its keys: ``encoder.conv1.weight``,
``segmentation_head.0.weight`` and ``decoder.blocks.*``), and an smp ``save_pretrained``
folder (``config.json`` with ``_model_class`` + ``model.safetensors``). Both load strictly into
:mod:`..architectures.smp` models; the meta says ImageNet normalisation, as smp encoders expect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ...errors import SegmentationError
from ..architectures.base import SegmentationUNet
from ..architectures.resnet import RESNET_LAYOUTS
from ..meta import SegmentationMeta, imagenet_normalization
from ..registry import build_model
from ..weights import load_weights_into
from .registry import CheckpointAdapter, register_adapter

log = logging.getLogger(__name__)

SMP_CLASSES = {"Unet": "smp_unet", "UnetPlusPlus": "smp_unet_plus_plus"}


def sniff_smp_state_dict(state: Mapping[str, Any]) -> str | None:
    """``"smp_unet"`` / ``"smp_unet_plus_plus"`` when the keys are smp's, else None."""
    if "encoder.conv1.weight" not in state or "segmentation_head.0.weight" not in state:
        return None
    if "decoder.blocks.x_0_0.conv1.0.weight" in state:
        return "smp_unet_plus_plus"
    if "decoder.blocks.0.conv1.0.weight" in state:
        return "smp_unet"
    return None


def _encoder_name(state: Mapping[str, torch.Tensor], where: str) -> str:
    counts = []
    for layer in range(1, 5):
        n = 0
        while f"encoder.layer{layer}.{n}.conv1.weight" in state:
            n += 1
        counts.append(n)
    kind = "bottleneck" if "encoder.layer1.0.conv3.weight" in state else "basic"
    for name, layout in RESNET_LAYOUTS.items():
        if layout == (kind, tuple(counts)):
            return name
    raise SegmentationError(f"{where}: smp encoder with {kind} blocks {counts} is not a ResNet UNet Lab "
                            f"knows ({sorted(RESNET_LAYOUTS)})")


def smp_hparams(state: Mapping[str, torch.Tensor], kind: str, where: str = "") -> dict[str, Any]:
    """Hyper-parameters of an smp state dict, read off its keys and shapes."""
    hp: dict[str, Any] = {
        "encoder_name": _encoder_name(state, where),
        "in_channels": int(state["encoder.conv1.weight"].shape[1]),
        "out_channels": int(state["segmentation_head.0.weight"].shape[0]),
    }
    if kind == "smp_unet":
        n = 0
        while f"decoder.blocks.{n}.conv1.0.weight" in state:
            n += 1
        hp["decoder_channels"] = [int(state[f"decoder.blocks.{i}.conv1.0.weight"].shape[0]) for i in range(n)]
    else:
        n = 0
        while f"decoder.blocks.x_0_{n}.conv1.0.weight" in state:
            n += 1
        hp["decoder_channels"] = [int(state[f"decoder.blocks.x_0_{i}.conv1.0.weight"].shape[0]) for i in range(n)]
    hp["encoder_depth"] = len(hp["decoder_channels"])
    if any(k.startswith("decoder.blocks.") and ".attention" in k for k in state):
        raise SegmentationError(f"{where}: smp decoder attention (scse) is not supported")
    return hp


def _drop_aux(state: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    aux = [k for k in state if k.startswith("classification_head.") or k.startswith("encoder.fc.")]
    if aux:
        log.warning("%s: ignoring %d classification-head tensors (only the mask output is used)", where, len(aux))
    return {k: v for k, v in state.items() if k not in aux}


def build_from_state_dict(state: dict[str, torch.Tensor], kind: str, where: str = "") -> SegmentationUNet:
    """An empty smp-layout model that ``state`` fits (auxiliary heads are dropped from ``state``)."""
    cleaned = _drop_aux(state, where)
    for key in set(state) - set(cleaned):
        del state[key]
    return build_model(kind, **smp_hparams(state, kind, where))


def load_pretrained_folder(folder: Path) -> tuple[SegmentationUNet, SegmentationMeta]:
    """Read an smp ``save_pretrained`` folder: ``config.json`` (``_model_class``) + ``model.safetensors``."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SegmentationError(f"{folder}: a folder without config.json; expected an smp save_pretrained folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SegmentationError(f"{config_path}: unreadable config.json ({exc})") from None
    cls_name = config.get("_model_class")
    if cls_name not in SMP_CLASSES:
        raise SegmentationError(f"{config_path}: _model_class={cls_name!r}; UNet Lab reads smp "
                                f"{sorted(SMP_CLASSES)} folders")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise SegmentationError(f"{folder}: config.json says smp {cls_name} but model.safetensors is missing")
    for key, allowed in (("decoder_attention_type", (None,)), ("aux_params", (None,)),
                         ("decoder_use_norm", (None, True, "batchnorm")),
                         ("decoder_use_batchnorm", (None, True))):
        if config.get(key) not in allowed:
            raise SegmentationError(f"{config_path}: {key}={config.get(key)!r} is not supported "
                                    f"(UNet Lab reads {key} in {list(allowed)})")
    kind = SMP_CLASSES[cls_name]
    hp = {
        "encoder_name": config.get("encoder_name", "resnet34"),
        "encoder_depth": config.get("encoder_depth", 5),
        "decoder_channels": list(config.get("decoder_channels", (256, 128, 64, 32, 16))),
        "decoder_interpolation": config.get("decoder_interpolation", "nearest"),
        "in_channels": config.get("in_channels", 3),
        "out_channels": config.get("classes", 1),
    }
    try:
        model = build_model(kind, **hp)
    except SegmentationError as exc:
        raise SegmentationError(f"{config_path}: {exc}") from None
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as exc:  # SafetensorError
        raise SegmentationError(f"{weights}: broken safetensors file ({exc})") from None
    load_weights_into(model, _drop_aux(state, str(weights)), weights)
    meta = SegmentationMeta.for_model(model, source="smp", normalization=imagenet_normalization())
    if config.get("activation") not in (None, "identity", "sigmoid", "softmax", "softmax2d"):
        log.warning("%s: activation %r ignored; the model returns logits", config_path, config.get("activation"))
    return model, meta


def read_state_dict(tensors: dict[str, torch.Tensor], extras: dict[str, Any],
                    where: str) -> tuple[SegmentationUNet, SegmentationMeta] | None:
    """An smp-layout model with these weights (ImageNet normalisation); None when the keys are not smp's."""
    kind = sniff_smp_state_dict(tensors)
    if kind is None:
        return None
    model = build_from_state_dict(tensors, kind, where)
    load_weights_into(model, tensors, where)
    return model, SegmentationMeta.for_model(model, source="smp", normalization=imagenet_normalization())


ADAPTER = register_adapter(CheckpointAdapter(
    "smp", "an smp Unet/UnetPlusPlus (encoder.*, decoder.blocks.*)", read_state_dict=read_state_dict,
    read_folder=load_pretrained_folder))
