"""U-Net 3+ (Huang et al., ICASSP 2020): full-scale skip connections and deep supervision.

Encoder: ``depth + 1`` levels of (conv3x3-norm-ReLU) x 2 with ``base_channels * 2**l`` channels,
2x2 max pooling between them (the authors' ``unetConv2``; their model is ``depth=4``,
``base_channels=64``: filters 64..1024).

Decoder stage ``j`` (``depth - 1`` down to 0) fuses one feature map from *every* level ``i``:

- ``i < j``: encoder map ``E_i``, max-pooled by ``2**(j - i)`` (ceil mode, as the authors);
- ``i == j``: encoder map ``E_j`` as it is;
- ``i > j``: decoder map ``D_i`` (``D_depth = E_depth``, the bottleneck), bilinearly up-sampled
  by ``2**(i - j)`` (``align_corners=False``, as ``nn.Upsample(mode="bilinear")``).

Each of those goes through its own conv3x3-norm-ReLU to ``cat_channels`` (the authors'
``CatChannels``, default ``base_channels``), the ``depth + 1`` results are concatenated in level
order (``up_channels = cat_channels * (depth + 1)``, 320 in the paper) and fused by one
conv3x3-norm-ReLU of that width. The logits come from a 3x3 convolution on ``D_0``.

Every convolution has a bias (as the authors', so their files load strictly even though a norm
follows). Module names: ``encoder.{l}.{0,1}.{0,1}`` (conv, norm), ``branches.l{i}_to_d{j}.{0,1}``,
``fusions.d{j}.{0,1}``, ``heads.d{j}``, ``classifier.1``. Each conv-norm-ReLU is a plain
``nn.Sequential`` so the ``fast`` inference path folds and fuses it like the other models.

``deep_supervision=True`` adds a 3x3 head on every ``D_j`` and on ``E_depth`` (up-sampled
bilinearly to the input size). The side heads are used only in training (:meth:`forward_heads`
returns them all, :func:`deep_supervision_loss` weighs them); :meth:`forward` returns the
full-resolution head ``D_0`` alone. Loss weights (:data:`SIDE_WEIGHTS`): the full-resolution
head weighs 1, every side head ``1 / (depth + 1)``, and the total is divided by the sum of the
weights, so the loss has the scale of a single head's (the paper sums equal-weight hybrid losses;
down-weighting the coarse side outputs keeps the final head dominant, which trained better
at small budgets).

``classification_guided=True`` (off by default) adds the classification-guided module: dropout
0.5, 1x1 conv from the bottleneck to 2 logits, global max pool, sigmoid; ``presence`` is its
second probability (``[B]``, "the image holds foreground"). At inference (eval mode), images
whose argmax says "absent" get background logits everywhere (:data:`BACKGROUND_LOGIT`: one
channel -> -20, i.e. probability 2e-9; several channels -> class 0 at +20, others at -20).
The authors multiply the logits by 0 instead, which gives probability 0.5; in training the gate
is not applied and :func:`deep_supervision_loss` adds a binary cross-entropy on ``presence``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import SegmentationError
from .base import COMMON_DEFAULTS, SegmentationUNet
from .blocks import crop_to, make_norm, pad_to_multiple

BACKGROUND_LOGIT = 20.0
SIDE_WEIGHT_RATIO = 1.0  # side head weight = SIDE_WEIGHT_RATIO / (depth + 1)


def conv_norm_relu(cin: int, cout: int, norm: str) -> nn.Sequential:
    """conv3x3 (with bias) -> norm -> ReLU, as Sequential indices 0, 1, 2."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), make_norm(norm, cout), nn.ReLU(inplace=True))


def side_weights(depth: int, heads: int) -> list[float]:
    """Loss weight of each head in :meth:`UNet3Plus.forward_heads` order (full resolution first)."""
    return [1.0] + [SIDE_WEIGHT_RATIO / (depth + 1)] * (heads - 1)


_MAX_UPSAMPLE_ELEMENTS = 2**31 - 1  # CUDA's channels-last bilinear kernel refuses larger outputs


def upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bilinear up-sampling by ``scale`` (align_corners False), in batch chunks when the output
    would exceed what one kernel call addresses (a deep 1024-channel map taken to 512 px at batch 8
    does); the result is the same as one call's."""
    per_image = x[0].numel() * scale * scale
    chunk = max(1, _MAX_UPSAMPLE_ELEMENTS // max(1, per_image))
    if x.shape[0] <= chunk:
        return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    return torch.cat([F.interpolate(part, scale_factor=scale, mode="bilinear", align_corners=False)
                      for part in x.split(chunk)])


@dataclass
class UNet3PlusOutputs:
    """Everything one training forward gives: per-head logits at input size, and the presence probability."""

    heads: list[torch.Tensor]
    weights: list[float]
    presence: torch.Tensor | None


class UNet3Plus(SegmentationUNet):
    """U-Net 3+ with optional deep supervision and classification-guided module."""

    architecture = "unet3plus"
    defaults: dict[str, Any] = {
        **{k: v for k, v in COMMON_DEFAULTS.items() if k != "upsampling"},
        "cat_channels": 0,  # 0: base_channels
        "deep_supervision": False,
        "classification_guided": False,
    }

    @staticmethod
    def validate(cfg: dict[str, Any]) -> None:
        for name in ("deep_supervision", "classification_guided"):
            if not isinstance(cfg[name], bool):
                raise SegmentationError(f"hyper-parameter {name}={cfg[name]!r} must be true or false")
        cat = cfg["cat_channels"]
        if isinstance(cat, bool) or not isinstance(cat, int) or cat < 0 or cat > 4096:
            raise SegmentationError(f"hyper-parameter cat_channels={cat!r} must be an integer 0..4096 "
                                    "(0: base_channels)")

    def __init__(self, **config: Any) -> None:
        cfg = {**self.defaults, **config}
        super().__init__(cfg)
        depth, norm = cfg["depth"], cfg["norm"]
        ch = [cfg["base_channels"] * 2 ** i for i in range(depth + 1)]
        cat = cfg["cat_channels"] or ch[0]
        up = cat * (depth + 1)
        self.encoder = nn.ModuleList()
        for level in range(depth + 1):
            cin = cfg["in_channels"] if level == 0 else ch[level - 1]
            self.encoder.append(nn.Sequential(conv_norm_relu(cin, ch[level], norm),
                                              conv_norm_relu(ch[level], ch[level], norm)))
        self.branches = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        for j in range(depth - 1, -1, -1):
            for i in range(depth + 1):
                cin = ch[i] if i <= j or i == depth else up
                self.branches[f"l{i}_to_d{j}"] = conv_norm_relu(cin, cat, norm)
            self.fusions[f"d{j}"] = conv_norm_relu(up, up, norm)
        levels = range(depth + 1) if cfg["deep_supervision"] else [0]
        self.heads = nn.ModuleDict({
            f"d{j}": nn.Conv2d(ch[depth] if j == depth else up, cfg["out_channels"], 3, padding=1) for j in levels})
        if cfg["classification_guided"]:
            self.classifier = nn.Sequential(nn.Dropout(p=0.5), nn.Conv2d(ch[depth], 2, 1),
                                            nn.AdaptiveMaxPool2d(1), nn.Sigmoid())

    def _features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Decoder maps ``D_0 .. D_{depth-1}`` and the bottleneck as ``D_depth``."""
        depth = self.config["depth"]
        enc = [self.encoder[0](x)]
        for level in range(1, depth + 1):
            enc.append(self.encoder[level](F.max_pool2d(enc[-1], 2)))
        dec: dict[int, torch.Tensor] = {depth: enc[depth]}
        for j in range(depth - 1, -1, -1):
            parts = []
            for i in range(depth + 1):
                if i < j:
                    k = 2 ** (j - i)
                    src = F.max_pool2d(enc[i], k, k, ceil_mode=True)
                elif i == j:
                    src = enc[j]
                else:
                    src = upsample(dec[i], 2 ** (i - j))
                parts.append(self.branches[f"l{i}_to_d{j}"](src))
            dec[j] = self.fusions[f"d{j}"](torch.cat(parts, 1))
        return dec

    def _presence(self, bottleneck: torch.Tensor) -> torch.Tensor | None:
        if not self.config["classification_guided"]:
            return None
        return self.classifier(bottleneck).flatten(1)[:, 1]

    def _gate(self, logits: torch.Tensor, presence: torch.Tensor | None) -> torch.Tensor:
        if presence is None or self.training:
            return logits
        background = torch.full_like(logits[:1], -BACKGROUND_LOGIT)
        if logits.shape[1] > 1:
            background[:, 0] = BACKGROUND_LOGIT
        keep = (presence > 0.5).view(-1, 1, 1, 1)
        return torch.where(keep, logits, background)

    def _head(self, j: int, dec: dict[int, torch.Tensor]) -> torch.Tensor:
        out = self.heads[f"d{j}"](dec[j])
        return out if j == 0 else upsample(out, 2 ** j)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        dec = self._features(x)
        return self._gate(self._head(0, dec), self._presence(dec[self.config["depth"]]))

    def outputs(self, x: torch.Tensor) -> UNet3PlusOutputs:
        """Every head's logits at the input size (full resolution first), their loss weights, and presence."""
        self._check_input(x)
        xp, size = pad_to_multiple(x, self.size_divisor, self.config.get("pad_mode", "reflect"))
        dec = self._features(xp)
        presence = self._presence(dec[self.config["depth"]])
        heads = [crop_to(self._gate(self._head(int(name[1:]), dec), presence), size) for name in self.heads]
        return UNet3PlusOutputs(heads, side_weights(self.config["depth"], len(heads)), presence)

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.outputs(x).heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eval: the full-resolution head. Training with deep supervision: the heads' weighted mean
        (so a plain loss on the output still reaches every head; the trainer uses :meth:`supervised_loss`)."""
        if self.training and len(self.heads) > 1:
            out = self.outputs(x)
            return sum(w * h for w, h in zip(out.weights, out.heads, strict=True)) / sum(out.weights)
        return SegmentationUNet.forward_heads(self, x)[0]

    def supervised_loss(self, x: torch.Tensor, target: torch.Tensor, loss_fn: Any) -> torch.Tensor:
        """The deep-supervision training loss (:func:`deep_supervision_loss`) of input ``x``."""
        return deep_supervision_loss(self.outputs(x), target, loss_fn)


def deep_supervision_loss(outputs: UNet3PlusOutputs, target: torch.Tensor,
                          loss_fn: Any, presence_weight: float = 1.0) -> torch.Tensor:
    """Weighted mean of ``loss_fn(head_logits, target)`` over the heads, plus the presence BCE.

    ``target`` is what ``loss_fn`` takes (the training loop's target). The presence target of
    an image is whether its target has any foreground (class > 0, or any 1 in a one-channel
    target); its binary cross-entropy is added with ``presence_weight``.
    """
    total = sum(w * loss_fn(h, target) for w, h in zip(outputs.weights, outputs.heads, strict=True))
    loss = total / sum(outputs.weights)
    if outputs.presence is not None:
        flat = target.reshape(target.shape[0], -1)
        present = (flat > 0).any(1).to(outputs.presence.dtype)
        with torch.autocast(outputs.presence.device.type, enabled=False):  # BCE refuses autocast
            bce = F.binary_cross_entropy(outputs.presence.float().clamp(1e-6, 1 - 1e-6), present.float())
        loss = loss + presence_weight * bce
    return loss
