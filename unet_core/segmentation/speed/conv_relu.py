"""Convolution + bias (+ residual add) + ReLU as one cuDNN kernel, chosen by rule.

Used by the ``"fast"`` inference path on CUDA (:mod:`.fast`), after BatchNorm folding
(:mod:`.bn_folding`) has turned every conv + norm into a conv with bias.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ...compiling import is_compiling, is_out_of_memory
from .bn_folding import has_hooks

log = logging.getLogger(__name__)


# cuDNN's runtime-fusion engines for conv + bias (+ add) + ReLU: half-precision tensor-core
# kernels on channels_last data, from compute capability 8.0, for small dense kernels whose
# channel counts are multiples of 8; other shapes (a 7x7 stem, 3-channel input) get slower
# generic engines, so they stay on the unfused path.
FUSED_DTYPES = (torch.float16, torch.bfloat16)
FUSED_KERNELS = ((1, 1), (3, 3))
FUSED_CHANNEL_MULTIPLE = 8
FUSED_MIN_CAPABILITY = (8, 0)
AGREEMENT_RTOL = 2e-2  # of the output's largest magnitude: bf16 rounding of two summation orders


def fused_kernel_rule(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether the fused cuDNN kernel is used for ``conv`` on ``x``: a rule of shape, dtype and device.

    True when ``x`` is a CUDA tensor of compute capability >= ``FUSED_MIN_CAPABILITY``, in a
    ``FUSED_DTYPES`` dtype, channels_last, and ``conv`` is a dense (groups 1, dilation 1)
    ``FUSED_KERNELS`` convolution with zero padding whose input and output channels are
    multiples of ``FUSED_CHANNEL_MULTIPLE``. The same model, input shape, dtype and GPU kind give
    the same choice on every run (no timing).
    """
    if not x.is_cuda or x.dtype not in FUSED_DTYPES or x.ndim != 4:
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    if torch.cuda.get_device_capability(x.device) < FUSED_MIN_CAPABILITY:
        return False
    return (tuple(conv.kernel_size) in FUSED_KERNELS and conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.in_channels % FUSED_CHANNEL_MULTIPLE == 0 and conv.out_channels % FUSED_CHANNEL_MULTIPLE == 0)


class ConvReLU(nn.Module):
    """A (folded) Conv2d followed by ReLU, ``relu(conv(x) [+ z])``, as one cuDNN kernel where the rule allows.

    Eager PyTorch runs conv, then the bias add, (the residual add,) then the ReLU: extra passes
    over the output. ``torch.cudnn_convolution_relu`` / ``cudnn_convolution_add_relu`` do it in
    one (cuDNN runtime fusion). :meth:`fusable` (:func:`fused_kernel_rule`) says where it may run;
    the first call per input shape and dtype then checks that the fused kernel exists for that
    shape (a cuDNN build may lack an engine: it raises) and agrees with conv then ReLU, and
    records the answer in ``choice``; both checks give the same answer on every run of the same
    build and input shape. Elsewhere it is ``relu(conv(x) [+ z])``. Not for ``torch.compile``
    (inductor fuses by itself).
    """

    def __init__(self, conv: nn.Conv2d, fused: bool = True) -> None:
        super().__init__()
        self.conv = conv
        self.fused = fused  # False: always conv then ReLU (the fused kernel is never tried)
        self.choice: dict[tuple, bool] = {}

    def _fused(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        c = self.conv
        x = x.to(c.weight.dtype)
        args = (list(c.stride), list(c.padding), list(c.dilation), c.groups)
        if z is None:
            return torch.cudnn_convolution_relu(x, c.weight, c.bias, *args)
        return torch.cudnn_convolution_add_relu(x, c.weight, z.to(c.weight.dtype), 1.0, c.bias, *args)

    def _plain(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        y = self.conv(x)
        return (y if z is None else y + z).relu_()

    def _pick(self, x: torch.Tensor, z: torch.Tensor | None) -> bool:
        """Whether the fused kernel runs for this input: it exists for the shape and agrees with the plain path."""
        try:
            fused = self._fused(x, z)
        except Exception as exc:  # noqa: BLE001 - no engine for this shape: the plain path
            if is_out_of_memory(exc):
                raise
            log.debug("cuDNN conv%s + relu unavailable for %s: %s", "" if z is None else " + add", tuple(x.shape), exc)
            return False
        plain = self._plain(x, z)
        scale = float(plain.float().abs().max()) or 1.0
        if (not torch.isfinite(fused).all()
                or float((fused.float() - plain.float()).abs().max()) > AGREEMENT_RTOL * scale):
            log.warning("cuDNN fused conv + relu disagrees with conv + relu for %s; not used", tuple(x.shape))
            return False
        return True

    def fusable(self, x: torch.Tensor) -> bool:
        """Whether the fused kernel may be tried for ``x``: enabled, eager, and :func:`fused_kernel_rule`."""
        return self.fused and not is_compiling() and fused_kernel_rule(self.conv, x)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if self.fusable(x):
            key = (tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last),
                   None if z is None else (tuple(z.shape), z.dtype, z.is_contiguous(memory_format=torch.channels_last)))
            use = self.choice.get(key)
            if use is None:
                use = self.choice[key] = self._pick(x, z)
            if use:
                return self._fused(x, z)
        return self._plain(x, z)

class FusedResidual(nn.Module):
    """A folded residual block as ``relu(conv_k(... relu(conv_1 x)) + shortcut(x))`` with :class:`ConvReLU` layers.

    The same computation as ResidualDoubleConv, the ResNet BasicBlock and Bottleneck once their
    norms are folded (Identity); made by :func:`fuse_conv_relu`.
    """

    def __init__(self, convs: list[nn.Conv2d], shortcut: nn.Module | None) -> None:
        super().__init__()
        self.body = nn.ModuleList(ConvReLU(c) for c in convs[:-1])
        self.last = ConvReLU(convs[-1])
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        h = x
        for layer in self.body:
            h = layer(h)
        return self.last(h, identity)


def _residual_parts(module: nn.Module) -> tuple[list[nn.Module], nn.Module | None] | None:
    """(convs, shortcut) of a folded residual block of the pack, None when it is not one (or not folded)."""
    from ..architectures.blocks import ResidualDoubleConv
    from ..architectures.resnet import BasicBlock, Bottleneck

    layouts = {ResidualDoubleConv: (("conv1", "norm1"), ("conv2", "norm2"), "shortcut"),
               BasicBlock: (("conv1", "bn1"), ("conv2", "bn2"), "downsample"),
               Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), "downsample")}
    layout = layouts.get(type(module))
    if layout is None or has_hooks(module):
        return None
    pairs, shortcut_name = layout[:-1], layout[-1]
    convs = [module._modules[c] for c, _ in pairs]
    if (any(type(module._modules[n]) is not nn.Identity for _, n in pairs)
            or any(type(c) is not nn.Conv2d or has_hooks(c) for c in convs)):
        return None
    return convs, module._modules.get(shortcut_name)


def fuse_conv_relu(model: nn.Module) -> int:
    """Rewrite conv + ReLU runs of a folded copy into :class:`ConvReLU` layers (in place); returns how many.

    Found structurally, like the folding: ``Conv2d, [Identity,] ReLU`` in a plain Sequential
    (the Identity is a folded norm); the pack's residual blocks (ResidualDoubleConv, ResNet
    BasicBlock / Bottleneck) with folded norms become :class:`FusedResidual`; the ResNet stem's
    ``conv1`` / ``relu``. Meant for a copy after :func:`fold_batch_norms`.
    """
    from ..architectures.resnet import ResNetEncoder

    count = 0
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            parts = _residual_parts(child) if child is not None else None
            if parts is not None:
                setattr(module, name, FusedResidual(*parts))
                count += len(parts[0])
    for module in list(model.modules()):
        if (type(module) is ResNetEncoder and type(module.conv1) is nn.Conv2d and type(module.bn1) is nn.Identity
                and type(module.relu) is nn.ReLU and not (has_hooks(module.conv1) or has_hooks(module.relu))):
            module.conv1, module.relu = ConvReLU(module.conv1), nn.Identity()  # relu is used only after conv1
            count += 1
        if not (isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward):
            continue
        names = list(module._modules)
        for i, name in enumerate(names):
            conv = module._modules[name]
            if type(conv) is not nn.Conv2d or has_hooks(conv):
                continue
            j = i + 1
            while j < len(names) and type(module._modules[names[j]]) is nn.Identity:
                j += 1
            if j - i > 2 or j >= len(names):
                continue
            relu = module._modules[names[j]]
            if type(relu) is not nn.ReLU or has_hooks(relu) or any(has_hooks(module._modules[n]) for n in names[i + 1:j]):
                continue
            setattr(module, name, ConvReLU(conv))
            setattr(module, names[j], nn.Identity())
            count += 1
    return count
