"""Decoder steps without the concatenation, for the fast inference path.

A U-Net decoder step concatenates the skip features ``s`` and the upsampled deeper map ``u``
along channels and convolves the result. A convolution is linear in its input channels::

    conv(cat([s, u]); W, b) = conv(s; W_s) + conv(u; W_u) + b        W = [W_s | W_u]

so the concatenated map (as large as both inputs together) is never written nor read back:
``t = conv(s; W_s)`` runs first, and ``relu(conv(u; W_u) + t + b)`` is one cuDNN
conv + add + bias + ReLU kernel where :func:`.conv_relu.fused_kernel_rule` allows it (:class:`.conv_relu.ConvReLU`).

With a transposed-convolution upsampler, ``u = u0 + c`` (``u0`` the transposed convolution
without its bias ``c``), and adding ``c`` is one more pass over the step's largest map. It is
folded away instead. With the 3x3 convolution's zero padding,
``conv(c 1; W_u)[o, y, x] = sum over the taps (i, j) inside the map of T[o, i, j]`` with
``T[o, i, j] = sum_k W_u[o, k, i, j] c[k]``: the full sum ``sum_ij T`` everywhere inside, less the
taps that fall outside on the first/last row and column. The full sum goes into the bias; the
border terms (a row of taps off the first and last rows, a column off the first and last columns,
and the corner tap, subtracted twice there, added back) are added in place to ``t`` on those rows
and columns: O(H + W) pixels of work. This is exact math (rounding aside) for any map size,
including 1-pixel-high or -wide maps, where both row terms land on the same row.

Rewritten (:func:`split_decoder_concats`): the pack's U-Net, Residual-free ``Up`` and Attention
U-Net ``AttentionUp`` steps whose double conv starts with a folded 3x3 / padding 1 convolution
(``Conv2d``, ``Identity`` (a folded norm), ``ReLU``), no hooks. When the upsampled map does not
match the skip's size (a caller that bypassed the models' input padding), the step computes
``u`` with its bias and pads it as the original does, then runs the same split sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures.blocks import match_size
from .bn_folding import has_hooks
from .conv_relu import ConvReLU


class BorderTaps(nn.Module):
    """The border terms of ``conv(c 1; W_u)`` (module docstring), added in place to a conv output."""

    def __init__(self, taps: torch.Tensor) -> None:  # taps: T [O, 3, 3]
        super().__init__()
        self.register_buffer("rows", -taps.sum(2)[:, [0, 2]].t().unsqueeze(-1).contiguous())  # [2, O, 1]
        self.register_buffer("cols", -taps.sum(1)[:, [0, 2]].t().unsqueeze(-1).contiguous())  # [2, O, 1]
        self.register_buffer("corners", taps[:, [0, 0, 2, 2], [0, 2, 0, 2]].t().contiguous())  # [4, O]

    def add_to(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` [B, O, H, W] plus the border terms (in place; returns ``t``)."""
        t[:, :, 0, :] += self.rows[0]
        t[:, :, -1, :] += self.rows[1]
        t[:, :, :, 0] += self.cols[0]
        t[:, :, :, -1] += self.cols[1]
        t[:, :, 0, 0] += self.corners[0]
        t[:, :, 0, -1] += self.corners[1]
        t[:, :, -1, 0] += self.corners[2]
        t[:, :, -1, -1] += self.corners[3]
        return t


class SplitConcatUp(nn.Module):
    """A decoder step ``double_conv(cat([gate(skip), up(deep)]))`` as ``rest(relu(conv(u; W_u) + conv(s; W_s) + b'))``.

    ``gate``: the Attention U-Net's skip gate (``gate(skip, deep) -> (gated, alpha)``) or None;
    ``upsample``: the original upsampler (a ConvTranspose2d is run without its bias, which is
    folded: module docstring); ``first``: the folded first 3x3 conv over the concatenation;
    ``rest``: the double conv's layers after the first ReLU.
    """

    def __init__(self, gate: nn.Module | None, upsample: nn.Module, up_channels: int, first: nn.Conv2d,
                 rest: nn.Sequential, fused_kernels: bool) -> None:
        super().__init__()
        split = first.in_channels - up_channels
        weight = first.weight.detach()
        self.gate = gate
        self.upsample = upsample
        self.skip_conv = nn.Conv2d(split, first.out_channels, 3, padding=1, bias=False)
        self.skip_conv.weight = nn.Parameter(weight[:, :split].clone(), requires_grad=False)
        merge = nn.Conv2d(first.in_channels - split, first.out_channels, 3, padding=1, bias=True)
        merge.weight = nn.Parameter(weight[:, split:].clone(), requires_grad=False)
        bias = (first.bias.detach() if first.bias is not None
                else torch.zeros(first.out_channels, dtype=weight.dtype, device=weight.device))
        self.register_buffer("first_bias", bias.clone())  # for the size-mismatch path
        self.border: BorderTaps | None = None
        if isinstance(upsample, nn.ConvTranspose2d) and upsample.bias is not None:
            taps = torch.einsum("okij,k->oij", weight[:, split:].double(), upsample.bias.detach().double())
            bias = bias.double() + taps.sum((1, 2))
            self.border = BorderTaps(taps.to(weight.dtype))
        merge.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=False)
        self.merge = ConvReLU(merge, fused=fused_kernels)
        self.rest = rest

    def _upsampled(self, deep: torch.Tensor) -> torch.Tensor:
        up = self.upsample
        if self.border is not None:  # the transposed convolution without its (folded) bias
            return F.conv_transpose2d(deep, up.weight, None, up.stride, up.padding, up.output_padding,
                                      up.groups, up.dilation)
        return up(deep)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            skip, _ = self.gate(skip, deep)
        u = self._upsampled(deep)
        t = self.skip_conv(skip)
        if u.shape[-2:] != skip.shape[-2:]:  # the original's padding: the bias is not in the pad
            if self.border is not None:
                u = u + self.upsample.bias.view(1, -1, 1, 1).to(u.dtype)
            u = match_size(u, skip)
            merged = F.conv2d(u, self.merge.conv.weight, self.first_bias.to(u.dtype), 1, 1)
            return self.rest((merged + t).relu_())
        if self.border is not None:
            self.border.add_to(t)
        return self.rest(self.merge(u, t))


def _up_channels(up: nn.Module, first: nn.Conv2d) -> int | None:
    """Channels of the upsampled map, from the upsampler's structure (None: not one we know)."""
    if isinstance(up, nn.ConvTranspose2d):
        return up.out_channels
    if type(up) is nn.Upsample:  # the U-Net's bilinear step: the deep map is half the concatenation
        return first.in_channels // 2
    if type(up) is nn.Sequential and len(up) and type(up[-1]) is nn.Conv2d and not any(has_hooks(m) for m in up):
        return up[-1].out_channels  # upsample, then a 1x1 conv (the Attention U-Net's bilinear step)
    return None


def _parts(step: nn.Module) -> tuple[nn.Module | None, nn.Module, int, nn.Conv2d, nn.Sequential] | None:
    """(gate, upsample, its channels, first conv, rest) of a folded decoder step of the pack, or None."""
    from ..architectures.attention_unet import AttentionUp
    from ..architectures.blocks import DoubleConv
    from ..architectures.unet import Up

    if type(step) not in (Up, AttentionUp) or type(step.conv) is not DoubleConv or has_hooks(step):
        return None
    layers = list(step.conv.double_conv)
    first = layers[0]
    if (type(first) is not nn.Conv2d or type(layers[1]) is not nn.Identity or type(layers[2]) is not nn.ReLU
            or first.kernel_size != (3, 3) or first.padding != (1, 1) or first.stride != (1, 1)
            or first.dilation != (1, 1) or first.groups != 1 or first.padding_mode != "zeros"
            or any(has_hooks(m) for m in [step.conv, step.conv.double_conv, *layers, step.up])):
        return None
    channels = _up_channels(step.up, first)
    if channels is None or not 0 < channels < first.in_channels:
        return None
    return getattr(step, "gate", None), step.up, channels, first, nn.Sequential(*layers[3:])


def split_decoder_concats(model: nn.Module, fused_kernels: bool = True) -> int:
    """Rewrite the folded decoder steps of ``model`` into :class:`SplitConcatUp` (in place); returns how many.

    Meant for a copy after :func:`.bn_folding.fold_batch_norms`, before
    :func:`.conv_relu.fuse_conv_relu` (which then fuses the rest of each double conv).
    ``fused_kernels``: whether the merge may use cuDNN's conv + add + ReLU kernel."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            parts = _parts(child) if child is not None else None
            if parts is not None:
                setattr(module, name, SplitConcatUp(*parts, fused_kernels=fused_kernels))
                count += 1
    return count
