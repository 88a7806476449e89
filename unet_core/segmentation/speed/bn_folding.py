"""Fold eval-mode BatchNorm into the convolution before it (an inference copy, exact in real arithmetic).

Why folding is exact: in eval mode ``BN(z) = gamma * (z - mean) / sqrt(var + eps) + beta``, an
affine map per output channel ``c``, so for ``z = W * x + b``::

    s_c  = gamma_c / sqrt(var_c + eps)
    W'_c = W_c * s_c                    (Conv2d: weight dim 0; ConvTranspose2d: weight dim 1)
    b'_c = (b_c - mean_c) * s_c + beta_c

computed in float64 and cast back to the weight's dtype. Pairs are found structurally: adjacent
entries of a plain ``nn.Sequential`` (whose forward feeds each entry to the next), and named
attribute pairs of the pack's blocks whose forward is ``norm(conv(x))``
(:data:`FOLD_PAIRS`: ``conv1/norm1``, ``conv2/norm2`` of the 2D and 3D residual blocks, ``conv{i}/bn{i}`` of
the ResNet blocks and stem). A pair with a forward hook on either module, a norm in training
mode or without running statistics, or a channel mismatch is left alone (still correct, only
slower). The caller's model is never modified: folding works on a deep copy.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_CONV = nn.modules.conv._ConvNd
_NORM = nn.modules.batchnorm._BatchNorm

# class -> ((conv attribute, norm attribute), ...) for blocks whose forward applies norm(conv(x))
FOLD_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {}


def register_fold_pairs(cls: type, pairs: tuple[tuple[str, str], ...]) -> None:
    """Declare that ``cls.forward`` feeds ``conv`` straight into ``norm`` (and uses conv's output nowhere else)."""
    FOLD_PAIRS[cls] = tuple(pairs)


def _register_pack_blocks() -> None:
    from ..architectures.blocks import ResidualDoubleConv
    from ..architectures.resnet import BasicBlock, Bottleneck, ResNetEncoder
    from ..architectures.unet3d import ResidualBlock3d

    register_fold_pairs(ResidualDoubleConv, (("conv1", "norm1"), ("conv2", "norm2")))
    register_fold_pairs(ResidualBlock3d, (("conv1", "norm1"), ("conv2", "norm2")))
    register_fold_pairs(BasicBlock, (("conv1", "bn1"), ("conv2", "bn2")))
    register_fold_pairs(Bottleneck, (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")))
    register_fold_pairs(ResNetEncoder, (("conv1", "bn1"),))


_register_pack_blocks()


# ---------------------------------------------------------------- folding

def _declared_pairs(module: nn.Module) -> tuple[tuple[str, str], ...]:
    """The registered pairs of the class whose forward ``module`` actually runs."""
    for cls in type(module).__mro__:
        if cls in FOLD_PAIRS:
            return FOLD_PAIRS[cls] if type(module).forward is cls.forward else ()
    return ()


def _candidate_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv child name, norm child name) pairs of one module, found structurally."""
    pairs: list[tuple[str, str]] = []
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        names = list(module._modules)
        pairs.extend(zip(names, names[1:], strict=False))
    pairs.extend(_declared_pairs(module))
    return pairs


def has_hooks(module: nn.Module) -> bool:
    """Whether something watches this module's calls (then it must stay as it is)."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or getattr(module, "_forward_hooks_with_kwargs", None)
                or getattr(module, "_backward_hooks", None))


def _foldable(conv: Any, norm: Any) -> bool:
    return (isinstance(conv, _CONV) and isinstance(norm, _NORM) and not norm.training
            and norm.running_mean is not None and norm.running_var is not None
            and norm.num_features == conv.out_channels and not has_hooks(conv) and not has_hooks(norm)
            and conv.weight is not None and conv.weight.is_floating_point())


def conv_norm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Qualified names ``(conv, norm)`` of every foldable pair in ``model`` (eval norms only)."""
    found = []
    for prefix, module in model.named_modules():
        for conv_name, norm_name in _candidate_pairs(module):
            conv, norm = module._modules.get(conv_name), module._modules.get(norm_name)
            if _foldable(conv, norm):
                dot = f"{prefix}." if prefix else ""
                found.append((dot + conv_name, dot + norm_name))
    return found


@torch.no_grad()
def _fold_pair(conv: nn.Module, norm: nn.Module) -> None:
    """Fold the eval ``norm`` into ``conv`` in place (new weight and bias parameters)."""
    weight = conv.weight
    w = weight.detach().to(torch.float64)
    var = norm.running_var.detach().to(device=w.device, dtype=torch.float64)
    mean = norm.running_mean.detach().to(device=w.device, dtype=torch.float64)
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach().to(device=w.device, dtype=torch.float64)
    shift = norm.bias.detach().to(device=w.device, dtype=torch.float64) if norm.bias is not None \
        else torch.zeros_like(mean)
    bias = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros_like(mean)
    groups = conv.groups
    if conv.transposed:  # weight [in, out/groups, *k]: the output channel is dim 1, per group
        cin, cout_g = w.shape[0], w.shape[1]
        k = w.shape[2:]
        w = (w.reshape(groups, cin // groups, cout_g, *k)
             * scale.reshape(groups, 1, cout_g, *([1] * len(k)))).reshape(w.shape)
    else:  # weight [out, in/groups, *k]
        w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    new_bias = (bias - mean) * scale + shift
    conv.weight = nn.Parameter(w.to(weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(new_bias.to(weight.dtype), requires_grad=False)


def _module_at(model: nn.Module, qualified: str) -> tuple[nn.Module, str]:
    parent_name, _, child = qualified.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """An eval deep copy of ``model`` with every conv -> eval BatchNorm pair folded; BN becomes Identity.

    ``model`` itself is not touched (nor its mode). Pairs that cannot be found structurally
    stay as they are. The copy's parameters do not require grad: it is for inference.
    """
    with torch.no_grad():
        folded = copy.deepcopy(model).eval()
        pairs = conv_norm_pairs(folded)
        for conv_name, norm_name in pairs:
            conv = folded.get_submodule(conv_name)
            parent, child = _module_at(folded, norm_name)
            _fold_pair(conv, parent._modules[child])
            setattr(parent, child, nn.Identity())
        for p in folded.parameters():
            p.requires_grad_(False)
    log.debug("folded %d BatchNorm layer(s) of %s", len(pairs), type(model).__name__)
    return folded
