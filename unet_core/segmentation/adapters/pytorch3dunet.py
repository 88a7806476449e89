"""pytorch-3dunet (wolny/pytorch-3dunet, used by PlantSeg) ``UNet3D`` and ``ResidualUNet3D`` state dicts.

Our own modules with that library's parameter names, so its checkpoints (``torch.save`` dicts
whose ``model_state_dict`` holds the weights; read with ``weights_only=True`` by the checkpoint
loader) load strictly:

- ``encoders.{i}.basic_module``: ``UNet3D``'s double conv ``SingleConv1`` / ``SingleConv2``, each
  a Sequential of ``groupnorm``/``batchnorm``, ``conv`` (no bias when a norm is present) and the
  non-linearity, in ``layer_order`` (``"gcr"``, both models' default: GroupNorm before the conv, then ReLU);
  in the encoder the first conv goes to ``max(out // 2, in)`` channels. ``ResidualUNet3D``'s
  block: ``conv1`` (1x1x1 with bias, identity when the width is kept), ``conv2`` (layer order),
  ``conv3`` (the same without the non-linearity), ``out = act(conv3(conv2(r)) + r)``; its ELU /
  LeakyReLU(0.1) / ReLU follows the order's letter. Encoders after the first max-pool 2x2x2.
- ``decoders.{i}``: ``UNet3D`` up-samples by nearest interpolation to the skip's size and
  concatenates ``[skip, x]``; ``ResidualUNet3D`` up-samples by
  ``upsampling.upsample.conv_transposed`` (3x3x3, stride 2, padding 1, no bias, then nearest
  interpolation to the skip's size) and adds the skip.
- ``final_conv``: 1x1x1 to the classes. Their eval-mode sigmoid/softmax is not part of the
  model here: ``forward`` returns the logits (what their ``return_logits=True`` gives).

Not in the weights and taken from the hyper-parameters (the library's defaults unless told):
``num_groups`` (8, or the largest of 4, 2, 1 that splits every GroupNorm width when 8 does not;
a norm over fewer channels than that uses 1 group), the non-linearity of ``layer_order``. Where the norm sits (before or after the conv) is read off the norm's width
where the first conv changes the width (``UNet3D``), else taken as the library default (before).
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

VARIANTS = ("UNet3D", "ResidualUNet3D")


def _nonlinearity(letter: str, residual_block: bool = False) -> nn.Module:
    if letter == "l":
        return nn.LeakyReLU(negative_slope=0.1 if residual_block else 0.01, inplace=True)
    if letter == "e":
        return nn.ELU(inplace=True)
    return nn.ReLU(inplace=True)


class SingleConv(nn.Sequential):
    """pytorch-3dunet ``SingleConv``: the letters of ``order`` as named children (g, b, c, r, l, e)."""

    def __init__(self, cin: int, cout: int, order: str, num_groups: int) -> None:
        super().__init__()
        conv_at = order.index("c")
        for i, ch in enumerate(order):
            if ch == "c":
                self.add_module("conv", nn.Conv3d(cin, cout, 3, padding=1, bias=not ("g" in order or "b" in order)))
            elif ch == "g":
                channels = cin if i < conv_at else cout
                groups = 1 if channels < num_groups else num_groups
                if channels % groups:
                    raise SegmentationError(f"pytorch-3dunet: a GroupNorm over {channels} channels cannot have "
                                            f"{groups} groups; set num_groups to what the model was trained with")
                self.add_module("groupnorm", nn.GroupNorm(groups, channels))
            elif ch == "b":
                self.add_module("batchnorm", nn.BatchNorm3d(cin if i < conv_at else cout))
            elif ch in "rle":
                self.add_module({"r": "ReLU", "l": "LeakyReLU", "e": "ELU"}[ch], _nonlinearity(ch))
            else:
                raise SegmentationError(f"pytorch-3dunet: unsupported layer order letter {ch!r} in {order!r}")


class DoubleConv(nn.Sequential):
    """``SingleConv1`` then ``SingleConv2``; in the encoder the first goes to ``max(out // 2, in)`` channels."""

    def __init__(self, cin: int, cout: int, encoder: bool, order: str, num_groups: int) -> None:
        super().__init__()
        mid = max(cout // 2, cin) if encoder else cout
        self.add_module("SingleConv1", SingleConv(cin, mid, order, num_groups))
        self.add_module("SingleConv2", SingleConv(mid, cout, order, num_groups))


class ResNetBlock(nn.Module):
    """``act(conv3(conv2(r)) + r)`` with ``r = conv1(x)`` (1x1x1, identity when the width is kept)."""

    def __init__(self, cin: int, cout: int, order: str, num_groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()
        self.conv2 = SingleConv(cout, cout, order, num_groups)
        self.conv3 = SingleConv(cout, cout, "".join(c for c in order if c not in "rel"), num_groups)
        letter = next((c for c in "le" if c in order), "r")
        self.non_linearity = _nonlinearity(letter, residual_block=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(x)
        return self.non_linearity(self.conv3(self.conv2(residual)) + residual)


class Encoder(nn.Module):
    def __init__(self, basic_module: nn.Module, pool: bool) -> None:
        super().__init__()
        self.pool = pool
        self.basic_module = basic_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(F.max_pool3d(x, 2) if self.pool else x)


class _TransposeUpsample(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_transposed = nn.ConvTranspose3d(cin, cout, 3, stride=2, padding=1, bias=False)


class _Upsampling(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.upsample = _TransposeUpsample(cin, cout)


class Decoder(nn.Module):
    def __init__(self, basic_module: nn.Module, deconv: tuple[int, int] | None) -> None:
        super().__init__()
        if deconv is not None:
            self.upsampling = _Upsampling(*deconv)
        self.basic_module = basic_module
        self.deconv = deconv is not None

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        size = skip.shape[2:]
        if self.deconv:
            x = F.interpolate(self.upsampling.upsample.conv_transposed(x), size=size)
            return self.basic_module(skip + x)
        return self.basic_module(torch.cat((skip, F.interpolate(x, size=size)), 1))


class PyTorch3DUNet(SegmentationUNet):
    """pytorch-3dunet ``UNet3D`` (``variant="UNet3D"``) or ``ResidualUNet3D``, logits out."""

    architecture = "pytorch3dunet"
    spatial_dims = 3
    defaults: dict[str, Any] = {"in_channels": 1, "out_channels": 1, "variant": "UNet3D", "f_maps": [64, 128, 256, 512],
                                "layer_order": "gcr", "num_groups": 8, "pad_mode": "reflect"}

    @staticmethod
    def validate(cfg: dict[str, Any]) -> None:
        if cfg["variant"] not in VARIANTS:
            raise SegmentationError(f"pytorch3dunet: variant {cfg['variant']!r} must be one of {list(VARIANTS)}")
        f_maps = cfg["f_maps"]
        if not isinstance(f_maps, list | tuple) or len(f_maps) < 2 or not all(
                isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in f_maps):
            raise SegmentationError(f"pytorch3dunet: f_maps={f_maps!r} must list 2 or more positive widths")
        order = cfg["layer_order"]
        if not isinstance(order, str) or "c" not in order or order[0] in "rle" or set(order) - set("gbcrle"):
            raise SegmentationError(f"pytorch3dunet: layer_order {order!r} must hold 'c', may hold g/b/r/l/e, "
                                    "and not start with a non-linearity")

    def __init__(self, **config: Any) -> None:
        cfg = {**self.defaults, **config}
        cfg["f_maps"] = [int(f) for f in cfg["f_maps"]]
        super().__init__(cfg)
        f, order, groups = cfg["f_maps"], cfg["layer_order"], cfg["num_groups"]
        residual = cfg["variant"] == "ResidualUNet3D"

        def block(cin: int, cout: int, encoder: bool) -> nn.Module:
            return ResNetBlock(cin, cout, order, groups) if residual else DoubleConv(cin, cout, encoder, order, groups)

        self.encoders = nn.ModuleList(
            Encoder(block(cfg["in_channels"] if i == 0 else f[i - 1], f[i], True), pool=i > 0) for i in range(len(f)))
        rev = f[::-1]
        self.decoders = nn.ModuleList(
            Decoder(block(rev[i + 1] if residual else rev[i] + rev[i + 1], rev[i + 1], False),
                    (rev[i], rev[i + 1]) if residual else None) for i in range(len(f) - 1))
        self.final_conv = nn.Conv3d(f[0], cfg["out_channels"], 1)

    @property
    def size_divisor(self) -> tuple[int, int, int]:  # type: ignore[override]
        d = 2 ** (len(self.config["f_maps"]) - 1)
        return (d, d, d)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for encoder in self.encoders:
            x = encoder(x)
            feats.insert(0, x)
        for decoder, skip in zip(self.decoders, feats[1:], strict=True):
            x = decoder(skip, x)
        return self.final_conv(x)

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise SegmentationError(f"pytorch3dunet: expected a volume batch [B, {self.in_channels}, D, H, W], "
                                    f"got {tuple(x.shape)}")
        xp, size = pad_volume(x, self.size_divisor, self.config["pad_mode"])
        return [self.forward_padded(xp)[..., : size[0], : size[1], : size[2]]]


def looks_like_pytorch3dunet(state: Mapping[str, Any]) -> bool:
    """True when the keys are pytorch-3dunet's (``encoders.0.basic_module.*``, ``final_conv.*``)."""
    return "final_conv.weight" in state and any(k.startswith("encoders.0.basic_module.") for k in state)


def pytorch3dunet_hparams(state: Mapping[str, torch.Tensor], where: str = "") -> dict[str, Any]:
    """The :class:`PyTorch3DUNet` hyper-parameters that this state dict fits (see the module notes)."""
    keys = list(state)
    final = state["final_conv.weight"]
    if final.ndim != 5:
        raise SegmentationError(f"{where}: pytorch-3dunet state dict with a {final.ndim - 2}D final_conv; "
                                "only the 3D models are supported")
    residual = "encoders.0.basic_module.conv2.conv.weight" in state
    levels = 0
    while any(k.startswith(f"encoders.{levels}.") for k in keys):
        levels += 1
    first = "conv2" if residual else "SingleConv1"
    f_maps = []
    for i in range(levels):
        last = "conv3" if residual else "SingleConv2"
        f_maps.append(int(state[f"encoders.{i}.basic_module.{last}.conv.weight"].shape[0]))
    prefix = f"encoders.0.basic_module.{first}."
    norm = "g" if f"{prefix}groupnorm.weight" in state else "b" if f"{prefix}batchnorm.weight" in state else ""
    order = "c"
    if norm:
        conv_w = state[f"{prefix}conv.weight"]
        width = int(state[f"{prefix}{'groupnorm' if norm == 'g' else 'batchnorm'}.weight"].shape[0])
        # the norm's width tells where it sits when the conv changes the width; else the library default
        before = width == conv_w.shape[1] if conv_w.shape[0] != conv_w.shape[1] else True
        order = norm + "c" if before else "c" + norm
    order += "r"
    in_ch = state["encoders.0.basic_module.conv1.weight"].shape[1] if (
        residual and "encoders.0.basic_module.conv1.weight" in state) else state[f"{prefix}conv.weight"].shape[1]
    widths = [int(v.shape[0]) for k, v in state.items() if k.endswith("groupnorm.weight")]
    groups = next(g for g in (8, 4, 2, 1) if all(w < g or w % g == 0 for w in widths))
    if groups != 8:
        log.warning("%s: GroupNorm widths %s do not split into 8 groups (the library default); using %d",
                    where, sorted(set(widths)), groups)
    return {"in_channels": int(in_ch), "out_channels": int(final.shape[0]),
            "variant": "ResidualUNet3D" if residual else "UNet3D", "f_maps": f_maps, "layer_order": order,
            "num_groups": groups}


def read_state_dict(tensors: dict[str, torch.Tensor], extras: dict[str, Any],
                    where: str) -> tuple[SegmentationUNet, SegmentationMeta] | None:
    """A :class:`PyTorch3DUNet` with these weights, or None when the keys are not pytorch-3dunet's."""
    if not looks_like_pytorch3dunet(tensors):
        return None
    model = build_model("pytorch3dunet", **pytorch3dunet_hparams(tensors, where))
    load_weights_into(model, tensors, where)
    return model, SegmentationMeta.for_model(model, source="pytorch-3dunet")


ADAPTER = register_adapter(CheckpointAdapter(
    "pytorch3dunet", "a pytorch-3dunet UNet3D/ResidualUNet3D (encoders.N.basic_module..., final_conv; "
    "model_state_dict)", read_state_dict=read_state_dict))
