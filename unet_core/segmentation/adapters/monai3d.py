"""MONAI ``BasicUNet`` and ``UNet`` state dicts with ``spatial_dims=3``, without MONAI installed.

Our own modules under MONAI's parameter names, so their state dicts load strictly. Each MONAI
``Convolution`` is ``conv`` then ``adn`` (norm ``N``, dropout ``D``, activation ``A``, in that
order: MONAI's default ``"NDA"``); dropout is inert at inference and left out.

- ``BasicUNet(features=(f0..f5))``: ``conv_0`` (two convs to f0), ``down_{1..4}`` (2x max pool, two
  convs), ``upcat_{4..1}`` (``upsample.deconv``: 2x2x2 stride-2 transposed conv to half the width,
  or the full width for ``upcat_1``; a replicate pad of 1 on any axis where the skip is larger;
  ``[skip, up]`` concatenated; two convs), ``final_conv`` (1x1x1). Norm: instance with affine
  (MONAI's default), batch where the keys hold running statistics; activation LeakyReLU(0.1).
  Only ``upsample="deconv"`` (the default) is supported.
- ``UNet(channels, strides, num_res_units)``: MONAI's recursive ``model.0`` (down), ``model.1``
  (``SkipConnection``: ``[x, submodule(x)]``), ``model.2`` (up: 3x3x3 transposed conv with
  ``output_padding = stride - 1``, then a one-unit residual block when ``num_res_units > 0``); the
  top up layer ends in a bare convolution. Down layers are strided ``ResidualUnit``s (residual =
  conv of the same kernel and stride, or 1x1x1 at stride 1 with a width change) or plain strided
  convolutions when ``num_res_units == 0``. Norm: instance without affine (MONAI's default; no
  weights), affine instance or batch when the keys say so; activation PReLU (``adn.A.weight``).

Hyper-parameters are read off the tensor shapes (:func:`monai_hparams`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import SegmentationError
from ..architectures.base import SegmentationUNet
from ..architectures.unet3d import pad_volume
from ..meta import SegmentationMeta
from ..registry import build_model
from ..weights import load_weights_into
from .registry import CheckpointAdapter, register_adapter

MONAI_NORMS = ("instance", "instance_affine", "batch")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.InstanceNorm3d(channels, affine=kind == "instance_affine")


class ADN(nn.Sequential):
    """MONAI's ``ADN`` in ``NDA`` order without the (inert) dropout: ``N`` then ``A``."""

    def __init__(self, channels: int, norm: str, act: str) -> None:
        super().__init__()
        self.add_module("N", _norm(norm, channels))
        self.add_module("A", nn.PReLU() if act == "prelu" else nn.LeakyReLU(0.1, inplace=True))


class Convolution(nn.Sequential):
    """MONAI ``Convolution``: ``conv`` (+ ``adn`` unless conv_only)."""

    def __init__(self, cin: int, cout: int, norm: str, act: str, stride: int = 1, kernel: int = 3,
                 transposed: bool = False, conv_only: bool = False) -> None:
        super().__init__()
        pad = (kernel - 1) // 2
        if transposed:
            self.add_module("conv", nn.ConvTranspose3d(cin, cout, kernel, stride, pad, output_padding=stride - 1))
        else:
            self.add_module("conv", nn.Conv3d(cin, cout, kernel, stride, pad))
        if not conv_only:
            self.add_module("adn", ADN(cout, norm, act))


class ResidualUnit(nn.Module):
    """MONAI ``ResidualUnit``: ``conv.unit{k}`` + ``residual`` (conv of the same stride, or identity)."""

    def __init__(self, cin: int, cout: int, stride: int, subunits: int, norm: str, act: str,
                 last_conv_only: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        c, s = cin, stride
        for k in range(max(1, subunits)):
            only = last_conv_only and k == max(1, subunits) - 1
            self.conv.add_module(f"unit{k}", Convolution(c, cout, norm, act, stride=s, conv_only=only))
            c, s = cout, 1
        if stride != 1 or cin != cout:
            kernel = 3 if stride != 1 else 1
            self.residual: nn.Module = nn.Conv3d(cin, cout, kernel, stride, (kernel - 1) // 2)
        else:
            self.residual = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.residual(x)


class SkipConnection(nn.Module):
    def __init__(self, submodule: nn.Module) -> None:
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.submodule(x)], dim=1)


class TwoConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.add_module("conv_0", Convolution(cin, cout, norm, "leakyrelu"))
        self.add_module("conv_1", Convolution(cout, cout, norm, "leakyrelu"))


class Down(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.convs = TwoConv(cin, cout, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(F.max_pool3d(x, 2))


class _Deconv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose3d(cin, cout, 2, 2)


class UpCat(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, norm: str, halves: bool) -> None:
        super().__init__()
        up = cin // 2 if halves else cin
        self.upsample = _Deconv(cin, up)
        self.convs = TwoConv(cskip + up, cout, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.upsample.deconv(x)
        pads = [0] * 6
        for i in range(3):
            if skip.shape[-i - 1] != up.shape[-i - 1]:
                pads[i * 2 + 1] = 1
        if any(pads):
            up = F.pad(up, pads, "replicate")
        return self.convs(torch.cat([skip, up], dim=1))


class _Volume3DAdapter(SegmentationUNet):
    """Shared: 3D input checks, pad to the divisor, crop back."""

    spatial_dims = 3

    def _divisor(self) -> tuple[int, int, int]:
        raise NotImplementedError

    @property
    def size_divisor(self) -> tuple[int, int, int]:  # type: ignore[override]
        return self._divisor()

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise SegmentationError(f"{self.architecture}: expected a volume batch [B, {self.in_channels}, D, H, W], "
                                    f"got {tuple(x.shape)}")
        xp, size = pad_volume(x, self.size_divisor, self.config["pad_mode"])
        return [self.forward_padded(xp)[..., : size[0], : size[1], : size[2]]]


class MonaiBasicUNet(_Volume3DAdapter):
    """MONAI ``BasicUNet(spatial_dims=3, features=...)`` (deconv up-sampling)."""

    architecture = "monai_basic_unet"
    defaults: dict[str, Any] = {"in_channels": 1, "out_channels": 2, "features": [32, 32, 64, 128, 256, 32],
                                "norm_layer": "instance_affine", "pad_mode": "reflect"}

    @staticmethod
    def validate(cfg: dict[str, Any]) -> None:
        f = cfg["features"]
        if not isinstance(f, list | tuple) or len(f) != 6 or not all(isinstance(v, int) and v > 0 for v in f):
            raise SegmentationError(f"monai_basic_unet: features={f!r} must be 6 positive widths")
        if cfg["norm_layer"] not in MONAI_NORMS:
            raise SegmentationError(f"monai_basic_unet: norm {cfg['norm_layer']!r} must be one of {list(MONAI_NORMS)}")

    def __init__(self, **config: Any) -> None:
        cfg = {**self.defaults, **config}
        cfg["features"] = [int(v) for v in cfg["features"]]
        super().__init__(cfg)
        f, norm = cfg["features"], cfg["norm_layer"]
        self.conv_0 = TwoConv(cfg["in_channels"], f[0], norm)
        for i in range(1, 5):
            setattr(self, f"down_{i}", Down(f[i - 1], f[i], norm))
        self.upcat_4 = UpCat(f[4], f[3], f[3], norm, True)
        self.upcat_3 = UpCat(f[3], f[2], f[2], norm, True)
        self.upcat_2 = UpCat(f[2], f[1], f[1], norm, True)
        self.upcat_1 = UpCat(f[1], f[0], f[5], norm, False)
        self.final_conv = nn.Conv3d(f[5], cfg["out_channels"], 1)

    def _divisor(self) -> tuple[int, int, int]:
        return (16, 16, 16)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        u = self.upcat_4(x4, x3)
        u = self.upcat_3(u, x2)
        u = self.upcat_2(u, x1)
        return self.final_conv(self.upcat_1(u, x0))


class MonaiUNet(_Volume3DAdapter):
    """MONAI ``UNet(spatial_dims=3, channels, strides, num_res_units)`` (kernel 3, PReLU by default)."""

    architecture = "monai_unet"
    defaults: dict[str, Any] = {"in_channels": 1, "out_channels": 2, "channels": [16, 32, 64, 128, 256],
                                "strides": [2, 2, 2, 2], "num_res_units": 2, "norm_layer": "instance", "act": "prelu",
                                "pad_mode": "reflect"}

    @staticmethod
    def validate(cfg: dict[str, Any]) -> None:
        c, s = cfg["channels"], cfg["strides"]
        if not isinstance(c, list | tuple) or len(c) < 2 or not isinstance(s, list | tuple) or len(s) != len(c) - 1:
            raise SegmentationError(f"monai_unet: channels={c!r} needs 2+ widths and strides={s!r} one fewer")
        if cfg["norm_layer"] not in MONAI_NORMS or cfg["act"] not in ("prelu", "leakyrelu"):
            raise SegmentationError(f"monai_unet: norm {cfg['norm_layer']!r} / act {cfg['act']!r} not supported")

    def __init__(self, **config: Any) -> None:
        cfg = {**self.defaults, **config}
        cfg["channels"], cfg["strides"] = [int(v) for v in cfg["channels"]], [int(v) for v in cfg["strides"]]
        super().__init__(cfg)
        res, norm, act = cfg["num_res_units"], cfg["norm_layer"], cfg["act"]

        def down(cin: int, cout: int, stride: int) -> nn.Module:
            if res > 0:
                return ResidualUnit(cin, cout, stride, res, norm, act)
            return Convolution(cin, cout, norm, act, stride=stride)

        def up(cin: int, cout: int, stride: int, top: bool) -> nn.Module:
            conv = Convolution(cin, cout, norm, act, stride=stride, transposed=True, conv_only=top and res == 0)
            if res == 0:
                return conv
            return nn.Sequential(conv, ResidualUnit(cout, cout, 1, 1, norm, act, last_conv_only=top))

        def block(cin: int, cout: int, channels: list[int], strides: list[int], top: bool) -> nn.Module:
            c, s = channels[0], strides[0]
            if len(channels) > 2:
                sub, upc = block(c, c, channels[1:], strides[1:], False), 2 * c
            else:
                sub, upc = down(c, channels[1], 1), c + channels[1]
            return nn.Sequential(down(cin, c, s), SkipConnection(sub), up(upc, cout, s, top))

        self.model = block(cfg["in_channels"], cfg["out_channels"], cfg["channels"], cfg["strides"], True)

    def _divisor(self) -> tuple[int, int, int]:
        total = 1
        for s in self.config["strides"]:
            total *= s
        return (total, total, total)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def sniff_monai(state: Mapping[str, Any]) -> str | None:
    """``"monai_basic_unet"``, ``"monai_unet"`` or None, from the key names."""
    if "conv_0.conv_0.conv.weight" in state and "upcat_1.convs.conv_0.conv.weight" in state:
        return "monai_basic_unet"
    if "model.0.conv.unit0.conv.weight" in state or ("model.0.conv.weight" in state and "model.2.conv.weight" in state):
        return "monai_unet"
    return None


def _norm_kind(state: Mapping[str, Any], prefix: str) -> str:
    if f"{prefix}running_mean" in state:
        return "batch"
    return "instance_affine" if f"{prefix}weight" in state else "instance"


def monai_hparams(state: Mapping[str, torch.Tensor], kind: str, where: str = "") -> dict[str, Any]:
    """The hyper-parameters of ``kind`` that this state dict fits; SegmentationError for a 2D one."""
    try:
        if kind == "monai_basic_unet":
            first = state["conv_0.conv_0.conv.weight"]
            if first.ndim != 5:
                raise SegmentationError(f"{where}: MONAI BasicUNet with spatial_dims={first.ndim - 2}; "
                                        "only spatial_dims=3 is read as a volume model")
            if "upcat_1.upsample.deconv.weight" not in state:
                raise SegmentationError(f"{where}: MONAI BasicUNet without deconv up-sampling is not supported")
            feats = [int(first.shape[0])] + [int(state[f"down_{i}.convs.conv_0.conv.weight"].shape[0])
                                             for i in range(1, 5)]
            feats.append(int(state["upcat_1.convs.conv_0.conv.weight"].shape[0]))
            return {"in_channels": int(first.shape[1]), "out_channels": int(state["final_conv.weight"].shape[0]),
                    "features": feats, "norm_layer": _norm_kind(state, "conv_0.conv_0.adn.N.")}
        res_units = "model.0.conv.unit0.conv.weight" in state
        channels, strides, prefix = [], [], "model."
        first = state["model.0.conv.unit0.conv.weight" if res_units else "model.0.conv.weight"]
        if first.ndim != 5:
            raise SegmentationError(f"{where}: MONAI UNet with spatial_dims={first.ndim - 2}; "
                                    "only spatial_dims=3 is read as a volume model")
        conv_key = "0.conv.unit0.conv.weight" if res_units else "0.conv.weight"
        while f"{prefix}{conv_key}" in state:
            w = state[f"{prefix}{conv_key}"]
            channels.append(int(w.shape[0]))
            strides.append(2)  # MONAI's usual; the stride is not in the weights
            prefix += "1.submodule."
        bottom = state[prefix + ("conv.unit0.conv.weight" if res_units else "conv.weight")]
        channels.append(int(bottom.shape[0]))
        units = 0
        while f"model.0.conv.unit{units}.conv.weight" in state:
            units += 1
        top_up = state["model.2.0.conv.weight" if res_units else "model.2.conv.weight"]
        norm_prefix = "model.0.conv.unit0.adn.N." if res_units else "model.0.adn.N."
        act_key = ("model.0.conv.unit0.adn.A.weight" if res_units else "model.0.adn.A.weight")
        return {"in_channels": int(first.shape[1]), "out_channels": int(top_up.shape[1]), "channels": channels,
                "strides": strides, "num_res_units": units, "norm_layer": _norm_kind(state, norm_prefix),
                "act": "prelu" if act_key in state else "leakyrelu"}
    except KeyError as exc:
        raise SegmentationError(f"{where}: looks like a MONAI {kind} state dict but lacks {exc}") from None


def read_state_dict(tensors: dict[str, torch.Tensor], extras: dict[str, Any],
                    where: str) -> tuple[SegmentationUNet, SegmentationMeta] | None:
    """A MONAI BasicUNet/UNet (3D) with these weights, or None when the keys are not MONAI's."""
    kind = sniff_monai(tensors)
    if kind is None:
        return None
    model = build_model(kind, **monai_hparams(tensors, kind, where))
    load_weights_into(model, tensors, where)
    return model, SegmentationMeta.for_model(model, source="monai")


ADAPTER = register_adapter(CheckpointAdapter(
    "monai3d", "a MONAI BasicUNet or UNet state dict with spatial_dims=3 (conv_0.conv_0..., upcat_N...; "
    "model.0.conv.unit0...)", read_state_dict=read_state_dict))
