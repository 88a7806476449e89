"""The parameter-free skip gate as two fused Triton kernels on CUDA; the eager path stays the reference.

Why: an SD1 sampling step in eager PyTorch is bound by kernel launches on the host (about
1100 kernels), and the eager gate (``skip_gate.energy_alpha`` + ``applied_map`` + a multiply)
adds 10 launches per gated block. Fused, a block costs two launches:

1. ``gate_energy_kernel``: per pixel the channel norms ``e_x = ||hsp||``, ``e_g = ||h||`` (fp32),
   and per tile of pixels the mean and the sum of squared deviations of both maps;
2. ``gate_apply_kernel``: combines the tile statistics into the per-sample mean and (biased)
   variance (Chan et al.'s pairwise update, which does not suffer the cancellation of
   ``E[e^2] - E[e]^2``), then ``alpha = sigmoid(sharpness * (x^ + g^))``,
   ``m = 1 - k_b + k_b * alpha`` with ``k_b = c (1 - floor)`` per batch row (0 for rows of an
   unselected cond/uncond chunk, which are then multiplied by exactly 1) and ``out = m * hsp``.

The math is that of ``skip_gate`` (its docstring), computed in fp32 and rounded once to the
features' dtype, where the eager path rounds the maps to the features' dtype between steps; the
two agree to within a few units in the last place of fp16 (tested in Triton's interpreter on
CPU and on CUDA). The fused path is used only where it applies: CUDA tensors on the current
device, no gradient wanted (the kernels have no backward), Triton importable, the gate and skip
at the same resolution, a float dtype, contiguous NCHW tensors (what ComfyUI's
UNet passes), not under ``torch.compile``, and not disabled with ``UNET_LAB_FUSED_GATE=0``. A
launch that fails is logged once and the eager path takes over for the rest of the process.

Launch cost: Triton's ``kernel[grid](...)`` binds and specialises every argument on every call
(tens of microseconds of Python), which on a launch-bound step costs as much as the eager
gate. So each case (shapes, dtypes, alignment of the caller's tensors: everything Triton
specialises a launch on) keeps its compiled kernels' runners (``CompiledKernel[grid]``), and
later calls go straight to them: about 8 us a launch on the H100 machine's host.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from types import SimpleNamespace

import torch

log = logging.getLogger(__name__)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_ELEMENTS_PER_PROGRAM = 2048  # channel block x pixel block per program
_MAX_TILES = 2048
_state: dict[str, object] = {"kernels": None, "failed": False, "triton": None}


def triton_available() -> bool:
    if _state["triton"] is None:
        _state["triton"] = importlib.util.find_spec("triton") is not None
    return bool(_state["triton"])


def _launch(plan: SimpleNamespace, name: str, jitted, grid: tuple[int, int, int], args: tuple,
            constexprs: dict) -> None:
    """Launch through the plan's kept runner, or bind and compile the first time (keeping it)."""
    runner = getattr(plan, name, None)
    if runner is not None:
        runner(*args, *constexprs.values())
        return
    compiled = jitted[grid](*args, **constexprs)  # binds, compiles if needed, launches
    if hasattr(compiled, "__getitem__") and hasattr(compiled, "function"):  # not in the interpreter
        setattr(plan, name, compiled[grid])


def load_kernels(fresh: bool = False) -> SimpleNamespace:
    """The two kernels wrapped by ``triton.jit`` (built once; ``fresh`` rebuilds, e.g. after a
    test set ``TRITON_INTERPRET=1`` to run them on CPU in Triton's interpreter)."""
    if _state["kernels"] is None or fresh:
        import triton

        from . import gate_kernels

        _state["kernels"] = SimpleNamespace(energy=triton.jit(gate_kernels.gate_energy_kernel),
                                            apply=triton.jit(gate_kernels.gate_apply_kernel))
        _state["plans"] = {}  # their kept runners belong to the old kernels
    return _state["kernels"]  # type: ignore[return-value]


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def fused_usable(h: torch.Tensor, hsp: torch.Tensor) -> bool:
    """Whether the fused gate may run on these tensors here: the per-call part of the conditions
    in the module docstring (shapes, dtypes and the switch are checked once per case by
    :func:`fused_skip_gate`, which returns None when they do not hold)."""
    return (not _state["failed"] and hsp.is_cuda and h.device == hsp.device
            and hsp.device.index == torch.cuda.current_device()  # Triton launches on the current device
            and tensors_allow_fusion(h, hsp))


def tensors_allow_fusion(h: torch.Tensor, hsp: torch.Tensor) -> bool:
    """Contiguous NCHW, no gradient wanted (the kernels have no backward: autograd would silently
    stop at the gate), and not being traced by ``torch.compile``."""
    wants_grad = torch.is_grad_enabled() and (h.requires_grad or hsp.requires_grad)
    return hsp.is_contiguous() and h.is_contiguous() and not wants_grad and not _compiling()


def _case_ok(h: torch.Tensor, hsp: torch.Tensor) -> bool:
    """The once-per-case conditions of the module docstring."""
    if hsp.dim() != 4 or h.dim() != 4 or h.shape[0] != hsp.shape[0] or h.shape[2:] != hsp.shape[2:]:
        return False
    if hsp.dtype not in _DTYPES or h.dtype not in _DTYPES or max(h.numel(), hsp.numel()) >= 2**31:
        return False
    return os.environ.get("UNET_LAB_FUSED_GATE", "1") != "0" and triton_available()


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def block_pixels(hw: int) -> int:
    """Pixels per program: at most about 256 tiles per sample (enough programs to fill the GPU
    at SD's latent sizes), 16..1024 pixels each."""
    return min(1024, max(16, _next_pow2(-(-hw // 256))))


def _scratch(numel: int, device: torch.device) -> torch.Tensor:
    """A reused fp32 buffer of at least ``numel`` elements per device (work on one stream is
    ordered, so the next gate's first kernel only runs after this gate's second one)."""
    buffers: dict = _state.setdefault("scratch", {})  # type: ignore[assignment]
    buf = buffers.get(device)
    if buf is None or buf.numel() < numel:
        buf = buffers[device] = torch.empty(max(numel, 1 << 16), dtype=torch.float32, device=device)
    return buf


def _plan(h: torch.Tensor, hsp: torch.Tensor, row_coefficients: torch.Tensor, want_alpha: bool):
    """Grids, sizes and the specialisation key of one gate call, made once per case."""
    key = (hsp.device, hsp.dtype, h.dtype, row_coefficients.dtype, hsp.shape, h.shape,
           hsp.data_ptr() % 16 == 0, h.data_ptr() % 16 == 0, row_coefficients.data_ptr() % 16 == 0, want_alpha)
    plans: dict = _state.setdefault("plans", {})  # type: ignore[assignment]
    plan = plans.get(key)
    if plan is None:
        if not _case_ok(h, hsp):
            plan = plans[key] = SimpleNamespace(ok=False)
            return plan
        batch, cx, height, width = hsp.shape
        hw = height * width
        bp = block_pixels(hw)
        n_tiles = -(-hw // bp)
        block_c = max(2, _ELEMENTS_PER_PROGRAM // bp)
        partial_offset = batch * 2 * hw
        # The key holds what Triton specialises on: dtypes, alignment of the caller's tensors (ours
        # come from the caching allocator, 512-byte aligned), and through the shapes every integer.
        plan = plans[key] = SimpleNamespace(
            ok=n_tiles <= _MAX_TILES, hw=hw, n_tiles=n_tiles, partial_offset=partial_offset,
            scratch=partial_offset + batch * n_tiles * 4,
            energy_grid=(batch, n_tiles, 1), apply_grid=(batch, n_tiles, -(-cx // block_c)),
            energy_constexprs={"BLOCK_P": bp, "BLOCK_C": block_c},
            apply_constexprs={"BLOCK_P": bp, "BLOCK_C": block_c, "BLOCK_T": _next_pow2(n_tiles),
                              "WRITE_ALPHA": bool(want_alpha)})
    return plan


def fused_skip_gate(h: torch.Tensor, hsp: torch.Tensor, row_coefficients: torch.Tensor, sharpness: float,
                    eps: float, want_alpha: bool = False) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(m * hsp, alpha or None)`` with ``alpha`` [B, 1, H, W] in ``hsp``'s dtype; None if the launch
    failed (then the caller runs the eager path). ``row_coefficients``: fp32 [B] on hsp's device,
    ``k_b = c (1 - floor)`` or 0 per row. ``hsp`` is not modified."""
    try:
        kernels = load_kernels()  # first: building them starts a fresh table of plans
        plan = _plan(h, hsp, row_coefficients, want_alpha)
        if not plan.ok:
            return None
        scratch = _scratch(plan.scratch, hsp.device)
        out = torch.empty_like(hsp)
        alpha = (torch.empty(hsp.shape[0], 1, *hsp.shape[2:], dtype=hsp.dtype, device=hsp.device)
                 if want_alpha else scratch)
        cx, hw, n_tiles, offset = hsp.shape[1], plan.hw, plan.n_tiles, plan.partial_offset
        _launch(plan, "energy_runner", kernels.energy, plan.energy_grid,
                (hsp, h, scratch, cx, h.shape[1], hw, n_tiles, offset), plan.energy_constexprs)
        _launch(plan, "apply_runner", kernels.apply, plan.apply_grid,
                (hsp, out, scratch, row_coefficients, alpha, cx, hw, n_tiles, offset, float(sharpness), float(eps)),
                plan.apply_constexprs)
    except Exception as exc:  # noqa: BLE001 - any launch failure falls back to the eager gate
        _state["failed"] = True
        log.warning("fused skip gate unavailable (%s: %s); using the eager gate", type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "")
        return None
    return out, (alpha if want_alpha else None)
