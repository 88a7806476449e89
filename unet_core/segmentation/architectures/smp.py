"""segmentation_models_pytorch (smp) Unet and UnetPlusPlus with ResNet encoders, as our modules.

The parameter names are smp's, so smp state dicts and ``save_pretrained`` folders load
strictly (:mod:`..adapters.smp` reads them): ``encoder.*`` (torchvision ResNet names),
``decoder.blocks.N.conv1.{0,1}`` (conv without bias, BatchNorm; index 2 is the ReLU),
``decoder.blocks.N.conv2.*`` (``attention1``/``attention2`` are identities: no scse),
``segmentation_head.0`` (3x3 conv with bias). UnetPlusPlus names its blocks ``decoder.blocks.x_{i}_{j}``.

Forward math as smp's: encoder features ``[x, 1/2, 1/4, 1/8, 1/16, 1/32]``; Unet decoder
block = upsample (nearest by default) to the next feature's size, concatenate
``[upsampled, skip]``, (conv3x3-BN-ReLU) x 2; the last block has no skip and upsamples to the
input size; no center block for ResNets. smp models expect ImageNet mean/std normalisation
and inputs whose sides divide by ``2**encoder_depth``: ``forward`` pads to that and crops back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import SegmentationError
from .base import SegmentationUNet
from .resnet import RESNET_LAYOUTS, ResNetEncoder

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")
SMP_CLASSES = {"Unet": "smp_unet", "UnetPlusPlus": "smp_unet_plus_plus"}


class Conv2dReLU(nn.Sequential):
    """conv3x3 (no bias) -> BatchNorm -> ReLU, as indices 0, 1, 2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Upsample, concatenate the skip (if any), two Conv2dReLU."""

    def __init__(self, cin: int, skip: int, cout: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv1 = Conv2dReLU(cin + skip, cout)
        self.attention1 = nn.Identity()
        self.conv2 = Conv2dReLU(cout, cout)
        self.attention2 = nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int], skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode=self.mode)
        if skip is not None:
            x = self.attention1(torch.cat([x, skip], dim=1))
        return self.attention2(self.conv2(self.conv1(x)))


class UnetDecoder(nn.Module):
    """smp's Unet decoder (no center block: ResNet encoders)."""

    def __init__(self, encoder_channels: list[int], decoder_channels: list[int], mode: str) -> None:
        super().__init__()
        enc = list(encoder_channels[1:])[::-1]
        ins = [enc[0]] + list(decoder_channels[:-1])
        skips = enc[1:] + [0]
        self.center = nn.Identity()
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o, mode) for i, s, o in zip(ins, skips, decoder_channels, strict=False))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        sizes = [tuple(f.shape[-2:]) for f in features][::-1]
        feats = features[1:][::-1]
        x, skips = self.center(feats[0]), feats[1:]
        for i, block in enumerate(self.blocks):
            x = block(x, sizes[i + 1], skips[i] if i < len(skips) else None)
        return x


class UnetPlusPlusDecoder(nn.Module):
    """smp's UnetPlusPlus decoder: nested blocks ``x_{d}_{l}``, 2x upsampling each."""

    def __init__(self, encoder_channels: list[int], decoder_channels: list[int], mode: str) -> None:
        super().__init__()
        enc = list(encoder_channels[1:])[::-1]
        ins = [enc[0]] + list(decoder_channels[:-1])
        skips = enc[1:] + [0]
        outs = list(decoder_channels)
        self.n = len(ins) - 1
        self.center = nn.Identity()
        blocks: dict[str, nn.Module] = {}
        for layer in range(self.n):
            for d in range(layer + 1):
                if d == 0:
                    cin, cskip, cout = ins[layer], skips[layer] * (layer + 1), outs[layer]
                else:
                    cin, cskip, cout = skips[layer - 1], skips[layer] * (layer + 1 - d), skips[layer]
                blocks[f"x_{d}_{layer}"] = DecoderBlock(cin, cskip, cout, mode)
        blocks[f"x_0_{self.n}"] = DecoderBlock(ins[-1], 0, outs[-1], mode)
        self.blocks = nn.ModuleDict(blocks)

    def _up(self, name: str, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        size = (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.blocks[name](x, size, skip)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        f = features[1:][::-1]
        f = [self.center(f[0])] + f[1:]
        dense: dict[tuple[int, int], torch.Tensor] = {}
        for layer in range(self.n):
            for d in range(self.n - layer):
                if layer == 0:
                    dense[(d, d)] = self._up(f"x_{d}_{d}", f[d], f[d + 1])
                else:
                    col = d + layer
                    cat = torch.cat([dense[(k, col)] for k in range(d + 1, col + 1)] + [f[col + 1]], dim=1)
                    dense[(d, col)] = self._up(f"x_{d}_{col}", dense[(d, col - 1)], cat)
        return self._up(f"x_0_{self.n}", dense[(0, self.n - 1)])


class _SmpModel(SegmentationUNet):
    defaults: dict[str, Any] = {
        "encoder_name": "resnet34", "encoder_depth": 5, "decoder_channels": [256, 128, 64, 32, 16],
        "decoder_interpolation": "nearest", "in_channels": 3, "out_channels": 1, "pad_mode": "reflect",
    }
    decoder_class: type[nn.Module] = UnetDecoder

    @staticmethod
    def validate(cfg: dict[str, Any]) -> None:
        if cfg["encoder_name"] not in RESNET_LAYOUTS:
            raise SegmentationError(f"hyper-parameter encoder_name={cfg['encoder_name']!r} must be one of "
                                    f"{sorted(RESNET_LAYOUTS)}")
        depth = cfg["encoder_depth"]
        if isinstance(depth, bool) or not isinstance(depth, int) or not 3 <= depth <= 5:
            raise SegmentationError(f"hyper-parameter encoder_depth={depth!r} must be 3, 4 or 5")
        dec = cfg["decoder_channels"]
        if (not isinstance(dec, (list, tuple)) or len(dec) != depth
                or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in dec)):
            raise SegmentationError(f"hyper-parameter decoder_channels={dec!r} must be {depth} positive "
                                    "integers (one per encoder stage)")
        if cfg["decoder_interpolation"] not in INTERPOLATIONS:
            raise SegmentationError(f"hyper-parameter decoder_interpolation={cfg['decoder_interpolation']!r} "
                                    f"must be one of {list(INTERPOLATIONS)}")

    def __init__(self, **config: Any) -> None:
        cfg = {**self.defaults, **config}
        cfg["decoder_channels"] = [int(c) for c in cfg["decoder_channels"]]
        super().__init__(cfg)
        self.encoder = ResNetEncoder(cfg["encoder_name"], cfg["in_channels"], cfg["encoder_depth"])
        self.decoder = self.decoder_class(self.encoder.out_channels, cfg["decoder_channels"],
                                          cfg["decoder_interpolation"])
        self.segmentation_head = nn.Sequential(
            nn.Conv2d(cfg["decoder_channels"][-1], cfg["out_channels"], 3, padding=1), nn.Identity(), nn.Identity())

    @property
    def size_divisor(self) -> int:
        return 2 ** int(self.config["encoder_depth"])

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.encoder(x)))


class SmpUnet(_SmpModel):
    """smp ``Unet`` with a ResNet encoder."""

    architecture = "smp_unet"


class SmpUnetPlusPlus(_SmpModel):
    """smp ``UnetPlusPlus`` with a ResNet encoder."""

    architecture = "smp_unet_plus_plus"
    decoder_class = UnetPlusPlusDecoder
