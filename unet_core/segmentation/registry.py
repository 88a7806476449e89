"""Build a segmentation model from its architecture name and hyper-parameters.

``build_model("unet", in_channels=3, out_channels=2)`` is the one entry point that
checkpoints, nodes and training use; unknown names or invalid values raise
:class:`~unet_core.errors.SegmentationError` with the accepted choices.

Common hyper-parameters (diffusers-style names): ``in_channels=3``, ``out_channels=1``
(classes), ``depth=4`` (downsamplings), ``base_channels=64``,
``norm="batch"|"group"|"instance"|"none"``, ``upsampling="transpose"|"bilinear"``,
``pad_mode="reflect"|"replicate"|"zeros"``. UNet++ adds ``deep_supervision=False``;
Attention U-Net adds ``gate_inter_ratio=0.5``. U-Net 3+ takes ``cat_channels``,
``deep_supervision`` and ``classification_guided`` (no ``upsampling``: bilinear by design). The
smp models take ``encoder_name`` (resnet18/34/50), ``decoder_channels`` and ``encoder_depth``
instead of depth/width/norm.

Volume models (input [B, C, D, H, W], ``spatial_dims = 3``): ``unet3d`` (``upsampling``
transpose/trilinear, ``residual``, ``pool_z``) and the adapters of pytorch-3dunet and MONAI.
``ARCHITECTURES``/``ALL_ARCHITECTURES`` list the 2D ones; ``VOLUME_ARCHITECTURES`` /
``ALL_VOLUME_ARCHITECTURES`` the 3D ones.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import SegmentationError
from .architectures.base import SegmentationUNet, resolve_hparams

ARCHITECTURES: tuple[str, ...] = ("unet", "unet_plus_plus", "attention_unet", "residual_unet", "unet3plus")
ADAPTER_ARCHITECTURES: tuple[str, ...] = ("smp_unet", "smp_unet_plus_plus")
ALL_ARCHITECTURES: tuple[str, ...] = ARCHITECTURES + ADAPTER_ARCHITECTURES
VOLUME_ARCHITECTURES: tuple[str, ...] = ("unet3d",)
VOLUME_ADAPTER_ARCHITECTURES: tuple[str, ...] = ("pytorch3dunet", "monai_basic_unet", "monai_unet")
ALL_VOLUME_ARCHITECTURES: tuple[str, ...] = VOLUME_ARCHITECTURES + VOLUME_ADAPTER_ARCHITECTURES

_CLASSES: dict[str, tuple[str, str]] = {
    "unet": (".architectures.unet", "UNet"),
    "unet_plus_plus": (".architectures.unet_plus_plus", "UNetPlusPlus"),
    "attention_unet": (".architectures.attention_unet", "AttentionUNet"),
    "residual_unet": (".architectures.residual_unet", "ResidualUNet"),
    "smp_unet": (".architectures.smp", "SmpUnet"),
    "smp_unet_plus_plus": (".architectures.smp", "SmpUnetPlusPlus"),
    "unet3plus": (".architectures.unet3plus", "UNet3Plus"),
    "unet3d": (".architectures.unet3d", "UNet3D"),
    "pytorch3dunet": (".adapters.pytorch3dunet", "PyTorch3DUNet"),
    "monai_basic_unet": (".adapters.monai3d", "MonaiBasicUNet"),
    "monai_unet": (".adapters.monai3d", "MonaiUNet"),
}


def model_class(architecture: str) -> type[SegmentationUNet]:
    """The model class of ``architecture``; SegmentationError if the name is unknown."""
    if architecture not in _CLASSES:
        raise SegmentationError(
            f"unknown segmentation architecture {architecture!r}; expected one of {list(ALL_ARCHITECTURES + ALL_VOLUME_ARCHITECTURES)}")
    module_name, cls_name = _CLASSES[architecture]
    module = importlib.import_module(module_name, __package__)
    return getattr(module, cls_name)


def is_volume_architecture(architecture: str) -> bool:
    """True for the 3D (volume) models."""
    return architecture in ALL_VOLUME_ARCHITECTURES


def default_hparams(architecture: str) -> dict[str, Any]:
    """The default hyper-parameters of ``architecture`` (a copy)."""
    return dict(model_class(architecture).defaults)


def build_model(architecture: str, /, **hparams: Any) -> SegmentationUNet:
    """A freshly initialised model of ``architecture`` with ``hparams`` over its defaults.

    ``hparams`` may be a model's whole ``.config``: its ``architecture`` entry must then agree.
    """
    named = hparams.pop("architecture", architecture)
    if named != architecture:
        raise SegmentationError(f"build_model({architecture!r}) got a config of architecture {named!r}")
    cls = model_class(architecture)
    cfg = resolve_hparams(architecture, cls.defaults, hparams, getattr(cls, "upsamplings", None))
    if hasattr(cls, "validate"):
        cls.validate(cfg)
    return cls(**cfg)
