"""The parameter-free skip gate as a fused Triton kernel on CUDA; ``skip_gate`` stays the reference.

The eager gate (``skip_gate.energy_alpha`` + ``applied_map`` + a multiply) runs about ten
kernels per gated block. Here one kernel (``gate_kernels.gate_kernel``) runs as two launches,
one program per sample and tile of pixels:

1. statistics: per pixel the channel norms ``e_x = ||hsp||``, ``e_g = ||h||`` (fp32), and per
   tile the mean and the sum of squared deviations of both maps;
2. apply: the tile statistics combined into each sample's mean and (population) variance, then
   ``alpha = sigmoid(sharpness * (x^ + g^))``, ``m = 1 - k_b + k_b * alpha`` with a row
   coefficient ``k_b = c (1 - floor)`` (0 for rows left alone, which are multiplied by exactly
   1), and ``out = m * hsp``.

With ``concat`` the output is ``cat([h, m * hsp], 1)`` with the strides ``torch.cat`` gives: the
statistics launch copies ``h`` into the first channels as it reads it. A UNet that takes the
concatenation from its patches (``diffusion/skip_concat.py``) then makes no copy of its own.

Both launches go through Triton's public ``kernel[grid](...)``. The math is ``skip_gate``'s,
computed in fp32 and rounded once to the features' dtype (the eager path rounds its maps to that
dtype between steps), so the two agree to a few units in the last place of the dtype.

Where the fused gate applies (:func:`fused_usable` per call, :func:`plan_case` per case): CUDA
tensors on the current device, no gradient wanted (the kernel has no backward), not under
``torch.compile`` tracing, Triton installed, ``UNET_LAB_FUSED_GATE`` not ``0``, 4-D maps at the
same resolution, float dtypes, "pixel-flat" strides (``pixel_flat``), int32-addressable sizes.
Elsewhere the caller runs the eager gate. A case whose launch raises is logged (once per gate)
and left to the eager gate from then on; the call returns None, never raises.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from ..compiling import is_compiling, triton_available

log = logging.getLogger(__name__)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_ELEMENTS_PER_STEP = 8192  # channel block x pixel block a program handles per loop step
_MAX_TILES = 2048  # tiles per sample the apply phase reduces in one block
_NUM_WARPS = 4
_UNPLANNED: Any = object()  # a case not seen yet (None: seen, and left to the eager gate)


@functools.cache
def _kernel() -> Any:
    """The jitted gate kernel (imports Triton)."""
    from .gate_kernels import gate_kernel

    return gate_kernel


def pixel_flat(t: torch.Tensor) -> bool:
    """4-D with ``stride(H) == W * stride(W)``: element ``(b, c, y, x)`` sits at
    ``b s_b + c s_c + (y W + x) s_p`` (contiguous NCHW, and channels-last views)."""
    return t.dim() == 4 and (t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3))


def tensors_allow_fusion(h: torch.Tensor, hsp: torch.Tensor) -> bool:
    """No gradient wanted (the kernel has no backward: autograd would silently stop at the gate),
    and not being traced by ``torch.compile``."""
    if torch.is_grad_enabled() and (h.requires_grad or hsp.requires_grad):
        return False
    return not is_compiling()


def fused_usable(h: torch.Tensor, hsp: torch.Tensor) -> bool:
    """The per-call conditions: ``hsp`` a CUDA tensor on the current device (where Triton
    launches) and :func:`tensors_allow_fusion`. The rest is checked once per case."""
    return hsp.is_cuda and hsp.get_device() == torch.cuda.current_device() and tensors_allow_fusion(h, hsp)


def block_pixels(hw: int, programs: int = 256) -> int:
    """Pixels per program: at most about ``programs`` tiles per sample, 16..4096 pixels each."""
    return min(4096, max(16, _next_pow2(-(-hw // programs))))


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _span(t: torch.Tensor) -> int:
    """One past the largest element offset of ``t``."""
    return 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride(), strict=True))


def _output_layout(h: torch.Tensor, hsp: torch.Tensor, concat: bool) -> torch.Tensor | None:
    """An empty meta tensor with the output's shape, dtype and strides: ``hsp``'s (None where
    ``empty_strided`` could not give a dense tensor with them), or with ``concat`` those of
    ``torch.cat([h, hsp], 1)`` (None where the dtypes differ: cat would promote ``h``)."""
    x = torch.empty_strided(hsp.shape, hsp.stride(), dtype=hsp.dtype, device="meta")
    if not concat:
        return x if torch.empty_like(x).stride() == x.stride() else None
    if h.dtype != hsp.dtype:
        return None
    g = torch.empty_strided(h.shape, h.stride(), dtype=h.dtype, device="meta")
    return torch.cat([g, x], 1)


@dataclass(frozen=True)
class GatePlan:
    """How one case (layouts, dtypes, device, row coefficients, output kind) is launched.

    ``grid``: (batch, tiles per sample). ``scalars``: the kernel's integer arguments after its
    pointers (channel counts, pixels, tiles, the partials' offset in the scratch, the strides of
    ``hsp``, ``h`` and the output). ``constants``: its compile-time values but ``PHASE``.
    ``out_shape``/``out_stride``: the output's layout; ``gated_channel``: the output channel
    where ``m * hsp`` starts (``h``'s channel count with ``concat``, else 0).
    ``coefficients``: the row coefficients on the device (fp32 [B])."""

    grid: tuple[int, int]
    scalars: tuple[int, ...]
    constants: dict[str, Any]
    scratch_numel: int
    out_shape: tuple[int, ...]
    out_stride: tuple[int, ...]
    gated_channel: int
    concat: bool
    want_alpha: bool
    coefficients: torch.Tensor


def plan_case(h: torch.Tensor, hsp: torch.Tensor, rows: tuple[float, ...], want_alpha: bool,
              concat: bool) -> GatePlan | None:
    """The plan for this case, or None where the fused gate does not apply (module docstring)."""
    if os.environ.get("UNET_LAB_FUSED_GATE", "1") == "0" or not triton_available():
        return None
    if hsp.dim() != 4 or h.dim() != 4 or h.shape[0] != hsp.shape[0] or h.shape[2:] != hsp.shape[2:]:
        return None
    if hsp.dtype not in _DTYPES or h.dtype not in _DTYPES or h.device != hsp.device or len(rows) != hsp.shape[0]:
        return None
    layout = _output_layout(h, hsp, concat)
    if layout is None or not (pixel_flat(hsp) and pixel_flat(h) and pixel_flat(layout)):
        return None
    if max(_span(h), _span(hsp), _span(layout), h.numel(), hsp.numel(), layout.numel()) >= 2**31:
        return None  # the kernel computes int32 offsets
    batch, cx, height, width = hsp.shape
    hw = height * width
    bp = block_pixels(hw)
    n_tiles = -(-hw // bp)
    if n_tiles > _MAX_TILES:
        return None
    sx, sg, so = hsp.stride(), h.stride(), layout.stride()
    partial_offset = batch * 2 * hw
    constants = {"BLOCK_P": bp, "BLOCK_C": max(2, _ELEMENTS_PER_STEP // bp), "BLOCK_T": _next_pow2(n_tiles),
                 "WRITE_ALPHA": bool(want_alpha), "COPY_G": bool(concat)}
    return GatePlan(
        grid=(batch, n_tiles),
        scalars=(cx, h.shape[1], hw, n_tiles, partial_offset, sx[0], sx[1], sx[3], sg[0], sg[1], sg[3],
                 so[0], so[1], so[3]),
        constants=constants, scratch_numel=partial_offset + batch * n_tiles * 4,
        out_shape=tuple(layout.shape), out_stride=tuple(so), gated_channel=h.shape[1] if concat else 0,
        concat=concat, want_alpha=want_alpha,
        coefficients=torch.tensor(rows, dtype=torch.float32, device=hsp.device))


def launch(plan: GatePlan, h: torch.Tensor, hsp: torch.Tensor, sharpness: float,
           eps: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a planned case: ``(out, alpha or None)`` in fresh tensors; ``h`` and ``hsp`` are only read.

    The scratch (energies and tile statistics, fp32) is allocated per call: the caching allocator
    keeps it on the current stream, so concurrent streams never share one. Pointers the kernel
    does not use (``alpha`` when not wanted, the copy of ``h`` without ``concat``) get the scratch."""
    out = torch.empty_strided(plan.out_shape, plan.out_stride, dtype=hsp.dtype, device=hsp.device)
    scratch = torch.empty(plan.scratch_numel, dtype=torch.float32, device=hsp.device)
    alpha = None
    if plan.want_alpha:
        alpha = torch.empty(hsp.shape[0], 1, *hsp.shape[2:], dtype=hsp.dtype, device=hsp.device)
    gated = out.narrow(1, plan.gated_channel, hsp.shape[1]) if plan.concat else out
    args = (hsp, h, gated, out if plan.concat else scratch, scratch if alpha is None else alpha, scratch,
            plan.coefficients, *plan.scalars, sharpness, eps)
    kernel = _kernel()[plan.grid]
    for phase in (1, 2):
        kernel(*args, **plan.constants, PHASE=phase, num_warps=_NUM_WARPS)
    return out, alpha


class FusedSkipGate:
    """One patch's fused gate: a plan per case, made on the case's first call.

    Call: ``gate(h, hsp, rows, want_alpha, concat)`` -> ``(m * hsp, alpha or None)``, ``alpha``
    [B, 1, H, W] in ``hsp``'s dtype (with ``concat``: ``cat([h, m * hsp], 1)`` in place of
    ``m * hsp``), or None where the case cannot run fused or its launch failed: then the caller
    runs the eager gate. ``rows``: per batch row ``k_b = c (1 - floor)``. The caller checks
    :func:`fused_usable` first; CPU tensors run only in Triton's interpreter."""

    def __init__(self, sharpness: float, eps: float) -> None:
        self.sharpness = float(sharpness)
        self.eps = float(eps)
        self._plans: dict[tuple, GatePlan | None] = {}
        self.failures = 0  # cases whose launch raised (each left to the eager gate)

    @property
    def fused_cases(self) -> int:
        """How many cases run fused (planned and not failed)."""
        return sum(plan is not None for plan in self._plans.values())

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, rows: tuple[float, ...], want_alpha: bool = False,
                 concat: bool = False) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        key = (hsp.shape, hsp.stride(), h.shape, h.stride(), hsp.dtype, h.dtype, hsp.device, h.device,
               rows, want_alpha, concat)
        try:
            plan = self._plans.get(key, _UNPLANNED)
            if plan is _UNPLANNED:
                plan = self._plans[key] = plan_case(h, hsp, rows, want_alpha, concat)
            if plan is None:
                return None
            return launch(plan, h, hsp, self.sharpness, self.eps)
        except Exception as exc:  # noqa: BLE001 - any failure: the eager gate for this case
            self._plans[key] = None
            self.failures += 1
            level = logging.WARNING if self.failures == 1 else logging.DEBUG
            log.log(level, "fused skip gate failed on %s %s maps (%s: %s); using the eager gate for them",
                    tuple(hsp.shape), str(hsp.dtype).replace("torch.", ""), type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "")
            return None


def fused_skip_gate(h: torch.Tensor, hsp: torch.Tensor, rows: tuple[float, ...], sharpness: float, eps: float,
                    want_alpha: bool = False, concat: bool = False) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """One call of a fresh :class:`FusedSkipGate` (for tests and one-off callers)."""
    return FusedSkipGate(sharpness, eps)(h, hsp, tuple(float(k) for k in rows), want_alpha, concat)
