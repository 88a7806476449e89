"""GroupNorm with what the pixel U-Net does around it, in one function: eager or one fused Triton pass.

``norm_act(x, norm, add=, scale_shift=, silu=)`` computes, with the ``[B, C, 1, 1]`` terms broadcast over pixels::

    y = norm(x + add)                        # add: [B, C, 1, 1] or None
    y = y * (1 + scale) + shift              # scale_shift: (scale, shift), each [B, C, 1, 1], or None
    y = silu(y)                              # when silu

The eager path is exactly the module's ops (``torch.addcmul`` for the scale-shift), so on the
CPU and in training the model computes what it always did. On CUDA, without autograd, the same
math runs as two launches of ``norm_kernels`` (statistics, then normalise-and-activate): the
activation is read twice and written once, where eager reads it up to four times and writes it
up to three. The fused result equals eager to a few units in the last place of the dtype (the
statistics are fp32 in both, merged in a different order; eager rounds to the dtype after the
norm and after the scale-shift, the kernel once at the end).

Where the fused path applies (checked per call, cheap): a CUDA tensor on the current device,
contiguous NCHW, fp16 / bf16 / fp32, fewer than 2**31 elements, an affine ``nn.GroupNorm``, no
gradient wanted (the kernels have no backward), not under ``torch.compile`` tracing, Triton
installed, and ``UNET_LAB_FUSED_NORM`` not ``0``. A launch that raises is logged once and the
eager path is used from then on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..compiling import is_compiling, is_out_of_memory, triton_available

log = logging.getLogger(__name__)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK = 1024  # elements per loop step of a program
_MAX_CHUNKS = 64  # chunks per (sample, group) row
_TARGET_PROGRAMS = 2048  # about this many (row, chunk) programs per launch
_NUM_WARPS = 4
_state = {"broken": False, "eager_only": 0}


@functools.cache
def _kernels() -> Any:
    from . import norm_kernels

    return norm_kernels


def on_launch_device(x: torch.Tensor) -> bool:
    """Whether ``x`` is where Triton launches: a CUDA tensor on the current device."""
    return x.is_cuda and x.get_device() == torch.cuda.current_device()


def fused_usable(x: torch.Tensor, norm: nn.GroupNorm) -> bool:
    """Whether :func:`norm_act` runs the fused kernels for ``x`` (module docstring)."""
    if _state["broken"] or _state["eager_only"] or x.dtype not in _DTYPES or x.dim() != 4:
        return False
    if not on_launch_device(x) or is_compiling():
        return False
    if norm.weight is None or norm.bias is None or not x.is_contiguous() or x.numel() >= 2**31:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or norm.weight.requires_grad):
        return False
    return os.environ.get("UNET_LAB_FUSED_NORM", "1") != "0" and triton_available()


@contextlib.contextmanager
def eager_only() -> Iterator[None]:
    """Run the eager path inside the block (benchmarks and tests compare the two)."""
    _state["eager_only"] += 1
    try:
        yield
    finally:
        _state["eager_only"] -= 1


def chunking(group_size: int, rows: int) -> tuple[int, int]:
    """(chunk, chunks): each row cut into at most ``_MAX_CHUNKS`` runs of a multiple of ``_BLOCK``
    elements, so that a launch has about ``_TARGET_PROGRAMS`` programs."""
    wanted = max(1, min(_MAX_CHUNKS, -(-_TARGET_PROGRAMS // rows)))
    chunk = -(-group_size // wanted)
    chunk = -(-chunk // _BLOCK) * _BLOCK
    return chunk, -(-group_size // chunk)


def _per_channel(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A ``[B, C, 1, 1]`` term as a contiguous ``[B, C]`` tensor (None stays None)."""
    if t is None:
        return None
    return t.expand(x.shape[0], x.shape[1], 1, 1).reshape(x.shape[0], x.shape[1]).contiguous()


def _fused(x: torch.Tensor, norm: nn.GroupNorm, add: torch.Tensor | None,
           scale_shift: tuple[torch.Tensor, torch.Tensor] | None, silu: bool) -> torch.Tensor:
    kernels = _kernels()
    b, c, h, w = x.shape
    groups = norm.num_groups
    group_size = (c // groups) * h * w
    rows = b * groups
    chunk, chunks = chunking(group_size, rows)
    partials = torch.empty(rows * chunks * 3, device=x.device, dtype=torch.float32)
    out = torch.empty_like(x)
    add_rows = _per_channel(add, x)
    scale, shift = (_per_channel(t, x) for t in scale_shift) if scale_shift is not None else (None, None)
    shape = (c, c // groups, groups, h * w, group_size, chunk, chunks)
    grid = (rows, chunks)
    kernels.stats_kernel[grid](x, add_rows if add_rows is not None else x, partials, *shape,
                               HAS_ADD=add_rows is not None, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    kernels.apply_kernel[grid](x, add_rows if add_rows is not None else x, norm.weight, norm.bias,
                               scale if scale is not None else x, shift if shift is not None else x, partials, out,
                               *shape, float(norm.eps), HAS_ADD=add_rows is not None,
                               SCALE_SHIFT=scale is not None, SILU=silu, BLOCK=_BLOCK, MAX_CHUNKS=_MAX_CHUNKS,
                               num_warps=_NUM_WARPS)
    return out


def eager_norm_act(x: torch.Tensor, norm: nn.Module, add: torch.Tensor | None = None,
                   scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None, silu: bool = True) -> torch.Tensor:
    """The reference: the model's own ops, in its order and dtypes."""
    y = norm(x + add if add is not None else x)
    if scale_shift is not None:
        scale, shift = scale_shift
        y = torch.addcmul(shift, y, 1 + scale)
    return F.silu(y) if silu else y


def norm_act(x: torch.Tensor, norm: nn.Module, add: torch.Tensor | None = None,
             scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None, silu: bool = True) -> torch.Tensor:
    """``silu?(norm(x + add) * (1 + scale) + shift)`` (module docstring); fused where it applies.
    ``norm`` may be any module (``nn.Identity`` where a block has no norm): only an ``nn.GroupNorm`` is fused."""
    if isinstance(norm, nn.GroupNorm) and fused_usable(x, norm):
        try:
            return _fused(x, norm, add, scale_shift, silu)
        except Exception as error:  # a Triton or driver failure: the eager ops are always right
            if is_out_of_memory(error):
                raise
            _state["broken"] = True
            log.warning("fused GroupNorm failed (%s: %s); pixel U-Nets use the eager GroupNorm from now on",
                        type(error).__name__, error)
    return eager_norm_act(x, norm, add, scale_shift, silu)
