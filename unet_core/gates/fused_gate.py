"""The parameter-free skip gate as fused Triton kernels on CUDA; the eager path stays the reference.

Why: an SD1 sampling step in eager PyTorch is bound by kernel launches on the host (about
1100 kernels), and the eager gate (``skip_gate.energy_alpha`` + ``applied_map`` + a multiply)
adds 10 launches per gated block. Fused (``gate_kernels.gate_kernel``), one program per sample
and tile of pixels does:

1. statistics: per pixel the channel norms ``e_x = ||hsp||``, ``e_g = ||h||`` (fp32), and per
   tile the mean and the sum of squared deviations of both maps;
2. apply: combine the tile statistics into the per-sample mean and (biased) variance (Chan et
   al.'s pairwise update, which does not suffer the cancellation of ``E[e^2] - E[e]^2``), then
   ``alpha = sigmoid(sharpness * (x^ + g^))``, ``m = 1 - k_b + k_b * alpha`` with
   ``k_b = c (1 - floor)`` per batch row (0 for rows of an unselected cond/uncond chunk, which
   are then multiplied by exactly 1) and ``out = m * hsp``.

Each program steps through its channels 8192 elements (channel block x pixel block) at a time:
the loops are latency-bound, and on an H200 steps of 2048 made the SD1 gates 1.6x slower
(241 us against 150 us of GPU time per step, SDXL 278 against 198).

Concatenation (``concat=True``): where the UNet takes the decoder's ``cat([h, hsp], 1)`` from
the patch (``diffusion/skip_concat.py``; our UNet does, ComfyUI's does not), the output is that
concatenation with ``m * hsp`` in place of ``hsp``: the statistics phase stores each block of
``h`` it reads into the output's first channels, and the apply phase writes ``m * hsp`` after
them, with the strides ``torch.cat`` would give. The gate then costs one kernel in place of the
UNet's copy instead of one beside it.

Small maps (``B * HW * (C_x + C_g)`` up to 2^23 elements: every SD1 block at 512 px, SDXL's
32x32 level at 1024 px) run both in one launch: the programs of a sample meet at a barrier in
between, which needs them all resident, so the launch is cooperative (the driver refuses it
rather than let it deadlock) with at most two programs per SM. Larger maps run two launches
(statistics, then apply): there the one-launch kernel, with few programs, costs more GPU time
(H100, steps of 2048 elements: SDXL 128x128 level, 103 us against 65 us) than the launch it
saves on the host. A case whose one-launch kernel cannot be launched, or does not give the
two-launch output bitwise on its first call, runs two launches. ``UNET_LAB_FUSED_GATE=2``
forces two launches everywhere.

The math is that of ``skip_gate`` (its docstring), computed in fp32 and rounded once to the
features' dtype, where the eager path rounds the maps to the features' dtype between steps; the
two agree to within a few units in the last place of fp16 (tested in Triton's interpreter on
CPU, where the two-launch form runs, and on CUDA). The fused path is used only where it applies:
CUDA tensors on the current device, no gradient wanted (the kernels have no backward), Triton
importable, the gate and skip at the same resolution, a float dtype, "pixel-flat" strides
(contiguous NCHW, what ComfyUI's UNet passes, and the channels-last views SD's transformer
blocks return; see ``gate_kernels``), 16-byte aligned data, not under ``torch.compile``, and
not disabled with ``UNET_LAB_FUSED_GATE=0``. A launch that fails is logged once and the eager
path takes over for the rest of the process.

Launch cost: Triton's ``kernel[grid](...)`` binds and specialises every argument on every call
(tens of microseconds of Python), which on a launch-bound step costs as much as the eager
gate. So each case (shapes, strides, dtypes, devices: everything Triton specialises a launch on;
unaligned data is refused, so alignment is fixed) keeps its compiled kernel(s) and launches them
through Triton's launcher with the arguments Triton's own runner passes (``_kept_launch``,
checked bitwise against the runner's output on the case's first call): on Triton 3.5 and 3.6
straight into the launcher's C function, with pointers as plain ints (the launcher would
otherwise call ``data_ptr()`` and ask the driver about every tensor argument on every call).
Per stream, a case keeps its launches as ``partial``s of that C function with everything but the
kernel's arguments bound, and the arguments that never change from call to call (scratch,
coefficients, sizes, strides, constants) in one tuple; a call passes the five pointers that do.
A :class:`FusedSkipGate` (one per patch) finds a call's case with one dictionary lookup; a
patch's call that repeats its block's last one (every step after the first) skips that too:
:meth:`FusedSkipGate.again` compares the layouts with that call's and launches. It keeps
a spare output buffer for one-launch maps (``FusedSkipGate._output``; each under 2^23 elements,
under 16 MB for any SD1 block at 512 px, batch 2, concatenation included). Scratch and barrier
buffers are per device and stream: work on one stream is ordered, so a gate's kernels only start
after the previous gate's.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

import torch

from ..compiling import is_compiling

log = logging.getLogger(__name__)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_ELEMENTS_PER_PROGRAM = 8192  # channel block x pixel block per program and loop step (2048: SD1 gates 1.6x slower)
_MAX_TILES = 2048
_PROGRAMS_PER_SM = 2  # one-launch gate: programs resident at once per SM (the barrier needs them all)
_ONE_LAUNCH_MAX_ELEMENTS = 1 << 23  # B * HW * (C_x + C_g) up to this: one launch (measured, module doc)
_NUM_WARPS = 4
_C_LAUNCH_TRITON = ((3, 5), (3, 6))  # Triton versions whose C launch arguments ``_kept_launch`` knows
_state: dict[str, Any] = {"kernels": None, "failed": False, "triton": None, "plans": {}, "scratch": {},
                          "one_gpu": None}
# C++ references to a storage (every tensor on it, and its Python object if one is alive); None where missing
_storage_use_count: Callable[[int], int] | None = getattr(torch._C, "_storage_Use_Count", None)


def triton_available() -> bool:
    if _state["triton"] is None:
        _state["triton"] = importlib.util.find_spec("triton") is not None
    return bool(_state["triton"])


def load_kernels(fresh: bool = False) -> SimpleNamespace:
    """The gate kernel (``triton.jit`` wraps it when ``gate_kernels`` is imported; ``fresh``
    re-imports that module, e.g. after a test set ``TRITON_INTERPRET=1`` to run it on CPU in
    Triton's interpreter)."""
    if _state["kernels"] is None or fresh:
        from . import gate_kernels

        if fresh:
            gate_kernels = importlib.reload(gate_kernels)
        _state["kernels"] = SimpleNamespace(gate=gate_kernels.gate_kernel)
        _state["plans"] = {}  # their kept launches belong to the old kernels
    return _state["kernels"]


def _no_launch_hooks() -> bool:
    """Whether Triton's launch enter/exit hooks (a profiler sets them) are unset or empty chains."""
    try:
        from triton import knobs

        hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    except (ImportError, AttributeError):  # Triton before 3.4 kept them on CompiledKernel
        from triton.compiler.compiler import CompiledKernel

        hooks = (getattr(CompiledKernel, "launch_enter_hook", None), getattr(CompiledKernel, "launch_exit_hook", None))
    return all(hook is None or getattr(hook, "calls", None) == [] for hook in hooks)


def _c_launch(launcher: Any) -> Callable[..., Any] | None:
    """Triton's compiled C launch function behind ``CompiledKernel.run``, where calling it straight
    is what ``run`` would do: Triton 3.5 or 3.6 (whose argument list ``_kept_launch`` passes), a
    kernel with no global or profiling scratch to allocate (``run``'s only other work). Else None."""
    launch = getattr(launcher, "launch", None)
    if not callable(launch) or _triton_minor() not in _C_LAUNCH_TRITON:
        return None
    if getattr(launcher, "global_scratch_size", None) != 0 or getattr(launcher, "profile_scratch_size", None) != 0:
        return None
    if not (hasattr(launcher, "launch_cooperative_grid") and hasattr(launcher, "launch_pdl")):
        return None
    return launch


def _triton_minor() -> tuple[int, ...]:
    import triton

    return tuple(int(part) for part in triton.__version__.split(".")[:2] if part.isdigit())


def _kept_launch(compiled: Any, grid: tuple[int, int, int],
                 direct: bool = True) -> tuple[Callable[[Any], Callable[..., None]], bool] | None:
    """``(on_stream, is_direct)`` for a compiled kernel on a fixed grid, where ``on_stream(stream)``
    is the launch on that stream, called with the kernel's arguments; None in the interpreter.

    Direct: the call skips Triton's runner (``CompiledKernel[grid]``) and passes its launcher the
    arguments the runner passes when no launch hook is set; where :func:`_c_launch` allows, it
    goes one level further, to the C function that launcher forwards to, as a ``partial`` with
    everything but the kernel's arguments bound (no Python frame per launch). :func:`_first_launch`
    checks its first use against the runner. Launch hooks are not called on this path, so it is
    taken only while none is set; otherwise (or ``direct=False``) the runner itself. Every kind
    takes pointer arguments as tensors or as plain ints (Triton's C launcher accepts both)."""
    if not (hasattr(compiled, "__getitem__") and hasattr(compiled, "function")):
        return None
    runner = compiled[grid]  # loads the module: ``function`` and ``run`` are set from here on
    launcher = getattr(compiled, "run", None)
    metadata = getattr(compiled, "packed_metadata", None)
    if direct and callable(launcher) and metadata is not None and _no_launch_hooks():
        function = compiled.function
        gx, gy, gz = grid
        c_launch = _c_launch(launcher)
        if c_launch is not None:
            cooperative, pdl = launcher.launch_cooperative_grid, launcher.launch_pdl

            def on_stream(stream: int) -> Callable[..., None]:
                return partial(c_launch, gx, gy, gz, stream, function, cooperative, pdl, None, None, metadata,
                               None, None, None)
        else:
            def on_stream(stream: int) -> Callable[..., None]:
                return partial(launcher, gx, gy, gz, stream, function, metadata, None, None, None)

        return on_stream, True

    def on_stream_runner(stream: Any) -> Callable[..., None]:
        return lambda *args: runner(*args, stream=stream)

    return on_stream_runner, False


def _as_pointers(args: tuple) -> tuple:
    """``args`` with every tensor replaced by its data pointer (an int)."""
    return tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)


def pixel_flat(t: torch.Tensor) -> bool:
    """4-D with ``stride(H) == W * stride(W)``: element ``(b, c, y, x)`` sits at
    ``b s_b + c s_c + (y W + x) s_p`` (contiguous NCHW, and channels-last views)."""
    return t.dim() == 4 and (t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3))


def _fail(exc: BaseException) -> None:
    """A launch failed: log it once, and leave the fused path for the rest of the process."""
    _state["failed"] = True
    log.warning("fused skip gate unavailable (%s: %s); using the eager gate", type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "")


def fused_usable(h: torch.Tensor, hsp: torch.Tensor) -> bool:
    """Whether the fused gate may run on these tensors now: the per-call part of the conditions in
    the module docstring (layouts, shapes, dtypes, devices of both tensors and the switch are
    checked once per case by :class:`FusedSkipGate`, which returns None when they do not hold)."""
    return not _state["failed"] and hsp.is_cuda and _on_current_device(hsp) and tensors_allow_fusion(h, hsp)


def _on_current_device(t: torch.Tensor) -> bool:
    """Whether a CUDA tensor is on the current device (where Triton launches); always so with one GPU."""
    if _state["one_gpu"] is None:
        _state["one_gpu"] = torch.cuda.device_count() == 1
    return _state["one_gpu"] or t.get_device() == torch.cuda.current_device()


def tensors_allow_fusion(h: torch.Tensor, hsp: torch.Tensor) -> bool:
    """No gradient wanted (the kernels have no backward: autograd would silently stop at the
    gate), and not being traced by ``torch.compile``."""
    if torch.is_grad_enabled() and (h.requires_grad or hsp.requires_grad):
        return False
    return not is_compiling()


def _case_ok(h: torch.Tensor, hsp: torch.Tensor, out: torch.Tensor | None) -> bool:
    """The once-per-case conditions of the module docstring; ``out``: an empty tensor with the
    output's layout (None where it cannot have one)."""
    if hsp.dim() != 4 or h.dim() != 4 or h.shape[0] != hsp.shape[0] or h.shape[2:] != hsp.shape[2:]:
        return False
    if out is None or h.get_device() != hsp.get_device() or not (pixel_flat(hsp) and pixel_flat(h) and pixel_flat(out)):
        return False
    if hsp.dtype not in _DTYPES or h.dtype not in _DTYPES:
        return False
    if max(_span(h), _span(hsp), _span(out), h.numel(), hsp.numel(), out.numel()) >= 2**31:  # int32 offsets
        return False
    return os.environ.get("UNET_LAB_FUSED_GATE", "1") != "0" and triton_available()


def _output_layout(h: torch.Tensor, hsp: torch.Tensor, concat: bool) -> torch.Tensor | None:
    """An empty meta tensor with the output's shape, dtype and strides: ``hsp``'s (which
    ``empty_like`` must keep: the kernel writes the output with them), or with ``concat``
    those ``torch.cat([h, hsp], 1)`` gives (computed on meta tensors: no device work)."""
    x = torch.empty_strided(hsp.shape, hsp.stride(), dtype=hsp.dtype, device="meta")
    if not concat:
        return x if torch.empty_like(x).stride() == x.stride() else None
    if h.dtype != hsp.dtype:  # cat would promote: not a plain copy of h
        return None
    g = torch.empty_strided(h.shape, h.stride(), dtype=h.dtype, device="meta")
    return torch.cat([g, x], 1)


def _span(t: torch.Tensor) -> int:
    """One past the largest element offset of ``t``."""
    return 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride(), strict=True))


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def block_pixels(hw: int, programs: int = 256) -> int:
    """Pixels per program: at most about ``programs`` tiles per sample, 16..4096 pixels each."""
    return min(4096, max(16, _next_pow2(-(-hw // programs))))


def _buffer(kind: str, numel: int, dtype: torch.dtype, device_index: int, stream: Any) -> torch.Tensor:
    """A reused buffer of at least ``numel`` elements per kind, device and stream: the fp32
    scratch (its contents never outlive a gate call) or the int32 barrier counters (zero between
    launches: every launch leaves them as it found them)."""
    buffers: dict = _state["scratch"]
    key = (kind, device_index, stream)
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        device = torch.device("cuda", device_index) if device_index >= 0 else torch.device("cpu")
        buf = buffers[key] = torch.zeros(max(numel, 1 << 10), dtype=dtype, device=device)
    return buf


def _multiprocessors(device_index: int) -> int:
    """SM count of a CUDA device (0 elsewhere): the most programs a one-launch gate may use."""
    if device_index < 0:
        return 0
    return int(torch.cuda.get_device_properties(device_index).multi_processor_count)


def _new_plan(key: tuple, h: torch.Tensor, hsp: torch.Tensor, want_alpha: bool, concat: bool) -> SimpleNamespace:
    """Grid, sizes and scalar arguments of one case (``key``), made once: one launch (PHASE 0) for
    maps small enough that it pays (module docstring), else two (PHASE 1, then 2). ``concat``:
    the output is ``cat([h, m * hsp], 1)`` (``h`` copied by the statistics phase as it reads it)."""
    layout = _output_layout(h, hsp, concat)
    if not _case_ok(h, hsp, layout):
        plan = _state["plans"][key] = SimpleNamespace(ok=False)
        return plan
    batch, cx, height, width = hsp.shape
    hw = height * width
    device_index = hsp.get_device()
    sms = _multiprocessors(device_index)
    resident = sms * _PROGRAMS_PER_SM
    bp = block_pixels(hw, max(1, resident // batch)) if sms else block_pixels(hw)
    n_tiles = -(-hw // bp)
    single = (bool(sms) and batch * n_tiles <= resident and batch * hw * (cx + h.shape[1]) <= _ONE_LAUNCH_MAX_ELEMENTS
              and os.environ.get("UNET_LAB_FUSED_GATE", "1") != "2")
    if not single:
        bp = block_pixels(hw)
        n_tiles = -(-hw // bp)
    partial_offset = batch * 2 * hw
    sx, sg, so = hsp.stride(), h.stride(), layout.stride()
    stream = None
    if device_index >= 0:
        import triton

        stream = triton.runtime.driver.active.get_current_stream
    constexprs = {"BLOCK_P": bp, "BLOCK_C": max(2, _ELEMENTS_PER_PROGRAM // bp), "BLOCK_T": _next_pow2(n_tiles),
                  "WRITE_ALPHA": bool(want_alpha), "COPY_G": bool(concat)}
    return _state["plans"].setdefault(key, SimpleNamespace(
        ok=n_tiles <= _MAX_TILES, device_index=device_index, current_stream=stream, single=single,
        scratch=partial_offset + batch * n_tiles * 4, sync=2 * batch, grid=(batch, n_tiles, 1),
        scalars=(cx, h.shape[1], hw, n_tiles, partial_offset, sx[0], sx[1], sx[3], sg[0], sg[1], sg[3],
                 so[0], so[1], so[3]),
        constexprs=constexprs, launches=None, concat=concat, out_shape=layout.shape, out_stride=so,
        x_channel=h.shape[1] if concat else 0, x_offset=(h.shape[1] * so[1] * hsp.element_size()) if concat else 0))


def _layout(h: torch.Tensor, hsp: torch.Tensor) -> tuple:
    """What a case is specialised on besides the rows and the output kind: shapes, strides, dtypes, devices."""
    return hsp.shape, hsp.stride(), h.shape, h.stride(), hsp.dtype, h.dtype, hsp.get_device(), h.get_device()


def _current_stream(plan: SimpleNamespace) -> Any:
    """The current stream of the plan's device as Triton names it (an int on CUDA; None elsewhere)."""
    return plan.current_stream(plan.device_index) if plan.current_stream is not None else None


def _launch_lane(plan: SimpleNamespace, lane: SimpleNamespace, x_ptr: int, g_ptr: int, out_ptr: int, concat: bool,
                 alpha_ptr: int) -> None:
    """Run a lane's kept launches with the five pointers that change per call (``_tensor_args``'
    order): ``m * hsp`` to ``out`` (after ``h``'s channels with ``concat``, ``h`` to its first
    ones; else the copy of ``h`` goes to the scratch, as does ``alpha`` when not wanted)."""
    g_out_ptr = out_ptr if concat else lane.scratch_ptr
    for launch, fixed in lane.calls:
        launch(x_ptr, g_ptr, out_ptr + plan.x_offset, g_out_ptr, alpha_ptr, *fixed)


def _bind(plan: SimpleNamespace, args: tuple, phase: int) -> Any:
    """Launch one phase through ``kernel[grid]`` (binds its arguments, compiles if needed);
    returns the compiled kernel (in the interpreter: whatever the interpreter returns)."""
    options = {"launch_cooperative_grid": True} if phase == 0 else {}
    return load_kernels().gate[plan.grid](*args, **plan.constexprs, PHASE=phase, num_warps=_NUM_WARPS, **options)


def _tensor_args(plan: SimpleNamespace, h: torch.Tensor, hsp: torch.Tensor, out: torch.Tensor,
                 scratch: torch.Tensor, coefficients: torch.Tensor, alpha: torch.Tensor | None, sync: torch.Tensor,
                 tail: tuple) -> tuple:
    """The kernel's arguments with tensors: ``m * hsp`` goes to ``out`` (with ``concat``, to its
    channels after ``h``'s, and ``h`` to its first ones); unused pointers get the scratch. The
    pointers that change from call to call come first (:meth:`FusedSkipGate._lane_calls`)."""
    x_out = out.narrow(1, plan.x_channel, hsp.shape[1]) if plan.concat else out
    return (hsp, h, x_out, out if plan.concat else scratch, scratch if alpha is None else alpha, scratch,
            coefficients, sync, *tail)


def _first_launch(plan: SimpleNamespace, make_args: Callable[[torch.Tensor], tuple], out: torch.Tensor,
                  stream: Any) -> None:
    """Run the gate through Triton's binding in two launches (the reference) into ``out``, then
    find the fastest way to launch this case that gives the same output bitwise, and keep it on
    the plan: one cooperative launch, or the two with a direct launcher, or Triton's runner.
    ``make_args(output)``: the kernel's tensor arguments for an output tensor."""
    args = make_args(out)
    two = [_bind(plan, args, phase) for phase in (1, 2)]
    kept = [_kept_launch(compiled, plan.grid) for compiled in two]
    if any(k is None for k in kept):  # the interpreter: bind on every call
        return
    values = tuple(plan.constexprs.values())
    candidates = []
    trial = torch.empty_like(out)
    trial_tensors = make_args(trial)
    trial_args = _as_pointers(trial_tensors)  # kept launches are given pointers
    if plan.single:
        try:
            one = _kept_launch(_bind(plan, trial_tensors, 0), plan.grid)
            if one is not None:
                candidates.append([(one[0], values + (0,))])
        except Exception as exc:  # noqa: BLE001 - no cooperative launch here: two launches
            log.info("fused skip gate: one-launch kernel unavailable (%s); two launches", exc)
    if any(is_direct for _, is_direct in kept):
        candidates.append([(on_stream, values + (phase,)) for (on_stream, _), phase in zip(kept, (1, 2), strict=True)])
    for launches in candidates:
        for on_stream, launch_values in launches:
            on_stream(stream)(*trial_args, *launch_values)
        if torch.equal(trial, out):
            plan.launches = launches
            return
        log.info("fused skip gate: a faster launch disagrees with the reference; not used")
    runners = [_kept_launch(compiled, plan.grid, direct=False) for compiled in two]
    plan.launches = [(on_stream, values + (phase,)) for (on_stream, _), phase in zip(runners, (1, 2), strict=True)]


class FusedSkipGate:
    """One patch's fused gate: per case (the layout of ``h`` and ``hsp`` and the row coefficients)
    the plan and the coefficients on the device, found with one dictionary lookup per call; per
    case and stream (a "lane"), the scratch pointers, a spare output (see :meth:`_output`) and the
    launches with every argument that does not change from call to call already bound.

    Call: ``gate(h, hsp, rows, want_alpha, concat)`` -> ``(m * hsp, alpha or None)`` with
    ``alpha`` [B, 1, H, W] in ``hsp``'s dtype (with ``concat``: ``cat([h, m * hsp], 1)`` in place
    of ``m * hsp``), or None if this case cannot run fused or a launch failed (then the caller
    runs the eager path). ``rows``: per batch row ``k_b = c (1 - floor)``, 0 for rows left alone.
    ``h`` and ``hsp`` are not modified. The caller checks :func:`fused_usable` first."""

    def __init__(self, sharpness: float, eps: float) -> None:
        self.sharpness = float(sharpness)
        self.eps = float(eps)
        self._cases: dict[tuple, SimpleNamespace] = {}
        self._repeats: dict[Any, SimpleNamespace] = {}  # slot -> what :meth:`again` checks and launches

    def _new_case(self, key: tuple, h: torch.Tensor, hsp: torch.Tensor, rows: tuple[float, ...],
                  want_alpha: bool, concat: bool) -> SimpleNamespace:
        plan_key = key[:8] + (want_alpha, concat)
        load_kernels()  # first: building the kernels starts a fresh table of plans
        plan = _state["plans"].get(plan_key) or _new_plan(plan_key, h, hsp, want_alpha, concat)
        if not plan.ok or len(rows) != hsp.shape[0]:
            return self._cases.setdefault(key, SimpleNamespace(ok=False))
        coefficients = torch.tensor(rows, dtype=torch.float32, device=hsp.device)
        return self._cases.setdefault(key, SimpleNamespace(
            ok=True, plan=plan, coefficients=coefficients, tail=(*plan.scalars, self.sharpness, self.eps), lanes={}))

    @staticmethod
    def _new_lane(case: SimpleNamespace, stream: Any) -> SimpleNamespace:
        """A case's state on one stream: the scratch and barrier buffers (shared by every case on
        that stream), the case's spare output, and its launches once the plan has picked them."""
        plan = case.plan
        scratch = _buffer("scratch", plan.scratch, torch.float32, plan.device_index, stream)
        sync = _buffer("sync", plan.sync, torch.int32, plan.device_index, stream)
        lane = SimpleNamespace(scratch=scratch, sync=sync, scratch_ptr=scratch.data_ptr(), spare=None, calls=None)
        FusedSkipGate._lane_calls(case, lane, stream)
        return case.lanes.setdefault(stream, lane)

    @staticmethod
    def _lane_calls(case: SimpleNamespace, lane: SimpleNamespace, stream: Any) -> None:
        """Once the plan has its launches: each as ``(launch, fixed)``, ``launch`` bound to the
        stream and called as ``launch(x, g, x_out, g_out, alpha, *fixed)`` with pointers, where
        ``fixed`` holds the arguments that stay (scratch, coefficients, barrier, sizes, strides,
        the gate's constants, the kernel's compile-time values)."""
        launches = case.plan.launches
        if launches is None or lane.calls is not None:
            return
        fixed = (lane.scratch_ptr, case.coefficients.data_ptr(), lane.sync.data_ptr(), *case.tail)
        lane.calls = [(on_stream(stream), fixed + values) for on_stream, values in launches]

    @staticmethod
    def _output(lane: SimpleNamespace, shape: tuple[int, ...], stride: tuple[int, ...], like: torch.Tensor,
                keep_spare: bool) -> torch.Tensor:
        """A tensor for the output: ``shape`` and ``stride``, ``like``'s dtype and device.

        Where the gate is launch-bound (``keep_spare``: one-launch maps) the allocation is a
        visible share of its host time, so the lane keeps a spare buffer and hands out an alias
        of it; the buffer is written again only once no alias of it, nor any view of one, is
        left anywhere: its storage's use count (C++ references: every tensor on it) is back to
        what it was with the spare alone. The caller's work on the previous alias was queued on
        the same stream before this gate's kernel, so it has read it by then. Larger maps, or a
        torch without the use count, get a fresh tensor every call."""
        spare = lane.spare
        if spare is not None and _storage_use_count(spare[2]) == spare[3]:
            return spare[0].detach()
        out = torch.empty_strided(shape, stride, dtype=like.dtype, device=like.device)
        if not keep_spare or _storage_use_count is None:
            return out
        storage = out.untyped_storage()  # held with the spare: its reference stays in the count
        lane.spare = (out, storage, storage._cdata, _storage_use_count(storage._cdata), out.data_ptr())
        return out.detach()

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, rows: tuple[float, ...], want_alpha: bool = False,
                 concat: bool = False, slot: Any = None, tag: Any = None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        layout = _layout(h, hsp)
        key = (*layout, rows, want_alpha, concat)
        try:
            case = self._cases.get(key) or self._new_case(key, h, hsp, rows, want_alpha, concat)
            if not case.ok:
                return None
            x_ptr = hsp.data_ptr()
            g_ptr = h.data_ptr()
            if (x_ptr | g_ptr) & 15:
                return None  # unaligned data would need other kernels: the eager path
            plan = case.plan
            stream = _current_stream(plan)
            lane = case.lanes.get(stream) or self._new_lane(case, stream)
            out = self._output(lane, plan.out_shape, plan.out_stride, hsp, plan.single)
            alpha = torch.empty(hsp.shape[0], 1, *hsp.shape[2:], dtype=hsp.dtype, device=hsp.device) if want_alpha else None
            if lane.calls is None:
                self._bound_call(case, lane, h, hsp, out, alpha, stream)
            else:  # kept launches take pointers: the tensors were checked above, the launcher need not
                _launch_lane(plan, lane, x_ptr, g_ptr, out.data_ptr(), concat,
                             alpha.data_ptr() if want_alpha else lane.scratch_ptr)
            if slot is not None and not want_alpha and lane.spare is not None and lane.calls is not None:
                self._repeats[slot] = SimpleNamespace(tag=tag, concat=concat, layout=layout, plan=plan, lane=lane,
                                                      stream=stream)
        except Exception as exc:  # noqa: BLE001 - any launch failure falls back to the eager gate
            _fail(exc)
            return None
        return out, alpha

    def again(self, slot: Any, h: torch.Tensor, hsp: torch.Tensor, tag: Any, concat: bool) -> torch.Tensor | None:
        """The output of a call that repeats ``slot``'s last one (a patch passes its block id), or None.

        A sampling step calls each block's gate with tensors of the layouts of the step before, so
        the case, its lane and its launches are the ones that call used. This checks just that,
        with no lookup: the same layouts, dtypes and devices as the call that left ``slot``
        (``__call__`` with ``slot``, no alpha wanted, on a one-launch map with a spare output),
        the same ``tag`` (what the caller's rows follow from besides the batch: the patch's pass
        choice) and ``concat``, the same device and stream, aligned data, no gradient wanted, not
        compiling, and the lane's spare output free. Then it launches into the spare. None where
        anything differs: the caller makes the full call, which runs every check of the case."""
        last = self._repeats.get(slot)
        if last is None or last.tag != tag or last.concat != concat:
            return None
        if _layout(h, hsp) != last.layout or not fused_usable(h, hsp):
            return None
        plan, lane = last.plan, last.lane
        if _current_stream(plan) != last.stream:
            return None
        x_ptr = hsp.data_ptr()
        g_ptr = h.data_ptr()
        spare = lane.spare
        if (x_ptr | g_ptr) & 15 or _storage_use_count(spare[2]) != spare[3]:
            return None
        try:
            _launch_lane(plan, lane, x_ptr, g_ptr, spare[4], concat, lane.scratch_ptr)
        except Exception as exc:  # noqa: BLE001 - as in __call__
            _fail(exc)
            return None
        return spare[0].detach()

    @staticmethod
    def _bound_call(case: SimpleNamespace, lane: SimpleNamespace, h: torch.Tensor, hsp: torch.Tensor,
                    out: torch.Tensor, alpha: torch.Tensor | None, stream: Any) -> None:
        """A call with tensor arguments, through Triton's binding: the plan's first (which picks
        its launches, then kept on the lane), or, in Triton's interpreter, every call."""
        plan = case.plan

        def make_args(output: torch.Tensor) -> tuple:
            return _tensor_args(plan, h, hsp, output, lane.scratch, case.coefficients, alpha, lane.sync, case.tail)

        _first_launch(plan, make_args, out, stream)
        FusedSkipGate._lane_calls(case, lane, stream)


def fused_skip_gate(h: torch.Tensor, hsp: torch.Tensor, rows: tuple[float, ...], sharpness: float, eps: float,
                    want_alpha: bool = False, concat: bool = False) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """One call of a fresh :class:`FusedSkipGate` (what tests and one-off callers need)."""
    return FusedSkipGate(sharpness, eps)(h, hsp, tuple(float(k) for k in rows), want_alpha, concat)
