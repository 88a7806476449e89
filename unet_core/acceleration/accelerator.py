"""Run a diffusion model's forward through cached CUDA graphs where that is safe, else eagerly.

An :class:`Accelerator` is a ``"diffusion_model"`` wrapper (ComfyUI's calling convention,
``accelerator(executor, *args, **kwargs)``; ``unet_core.diffusion.wrappers``), so the same object
serves ComfyUI's ModelPatcher and the standalone patcher. For each call it decides:

1. eager, with the reason logged once, when capture cannot be correct or cannot pay: disabled; no
   CUDA tensor among the inputs (CPU runs); inputs on several devices or on the CPU; gradients
   wanted; the host says the model is partially loaded (``precheck``); the weights not all on the
   inputs' device; or an earlier capture of this signature failed;
2. otherwise the key: the module, every weight's address (``weights.py``: a reload, an offload or a
   re-patch moves them, so a new capture follows), the call's signature (``signature.py``: shapes,
   dtypes, cond/uncond composition, the set of patches by identity and their plain settings), the
   grad / inference mode and whether compiled;
3. a cached graph for the key: copy the inputs into its static buffers, replay, return copies of
   its outputs (bitwise the eager outputs: the same kernels on the same values);
4. none: capture one (``graphs.py``), replay it, keep it (LRU, shared pool). Any failure while
   capturing logs one line and runs this signature eagerly from then on.

``compile=True`` puts ``torch.compile`` (inductor, no CUDA graphs of its own) under the capture
where the accelerator is the innermost wrapper (it then compiles the unwrapped forward); the
first call's compile time is in the stats. Not thread-safe, like the patchers it wraps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..compiling import CompiledCall, is_out_of_memory
from .graphs import Capturer, CudaGraphCapturer, GraphCache, GraphEntry
from .signature import call_signature
from .weights import WeightWatch

log = logging.getLogger(__name__)

Precheck = Callable[[Any], "str | None"]


@dataclass
class AccelerationSettings:
    """The node's choices."""

    enabled: bool = True
    compile: bool = False
    max_graphs: int = 4
    warmup: int = 2


@dataclass
class AccelerationStats:
    """What happened so far: counts, capture costs, and why calls ran eagerly."""

    captures: int = 0
    replays: int = 0
    eager_calls: int = 0
    eager_reasons: dict[str, int] = field(default_factory=dict)
    capture_seconds: list[float] = field(default_factory=list)
    compile_seconds: list[float] = field(default_factory=list)
    pool_bytes: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"captured {self.captures} graph(s), {self.replays} replays, {self.eager_calls} eager calls"]
        if self.capture_seconds:
            lines.append("capture (warm-up included): " + ", ".join(f"{s:.3f} s" for s in self.capture_seconds))
        if any(self.compile_seconds):
            lines.append("first-call compile: " + ", ".join(f"{s:.1f} s" for s in self.compile_seconds))
        if self.pool_bytes:
            lines.append("graph pool growth: " + ", ".join(f"{b / 2**20:.1f} MiB" for b in self.pool_bytes))
        for reason, count in self.eager_reasons.items():
            lines.append(f"eager ({count} calls): {reason}")
        return "\n".join(lines)


def _first_device(tensors: list[torch.Tensor], types: tuple[str, ...]) -> torch.device | None:
    for t in tensors:
        if t.device.type in types:
            return t.device
    return None


def _tree_map(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_tree_map(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: _tree_map(fn, v) for k, v in value.items()}
    return value


def _innermost(executor: Any) -> bool:
    """Whether ``executor(...)`` runs the unwrapped forward next (ComfyUI's and ours differ in how
    they say it: ComfyUI hands a wrapper its own step, ``idx``; ours the step after it)."""
    if hasattr(executor, "idx") and hasattr(executor, "wrappers"):
        return executor.idx == len(executor.wrappers) - 1
    return bool(getattr(executor, "is_last", False))


class Accelerator:
    """A ``"diffusion_model"`` wrapper replaying CUDA graphs (see the module docstring)."""

    def __init__(self, settings: AccelerationSettings | None = None, capturer: Capturer | None = None,
                 precheck: Precheck | None = None, device_types: tuple[str, ...] = ("cuda",)) -> None:
        """``capturer``: the real CUDA one by default (tests inject a fake one, with ``device_types``
        naming the devices it captures on); ``precheck(module)``: the host's reason to run eagerly."""
        self.settings = settings or AccelerationSettings()
        self.device_types = device_types
        self.capturer = capturer or CudaGraphCapturer(self.settings.warmup)
        self.precheck = precheck
        self.cache = GraphCache(self.settings.max_graphs)
        self.stats = AccelerationStats()
        self._watches: dict[int, WeightWatch] = {}
        self._compiled: dict[int, tuple[Any, CompiledCall]] = {}
        self._failed: set[Any] = set()

    def __deepcopy__(self, memo: dict) -> Accelerator:
        return self  # shared on purpose across ModelPatcher.clone(): its graphs and stats

    # -- the wrapper -----------------------------------------------------------------
    def __call__(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        original = getattr(executor, "original", None) if _innermost(executor) else None
        return self.run(executor, getattr(executor, "class_obj", None), args, kwargs, original)

    def run(self, forward: Callable[..., Any], module: Any, args: tuple, kwargs: dict,
            original: Callable[..., Any] | None = None) -> Any:
        """``forward(*args, **kwargs)``, replayed from a graph where safe. ``module`` holds the weights;
        ``original`` is the unwrapped forward (what ``compile`` compiles), None when others wrap it."""
        if not self.settings.enabled:
            return self._eager("acceleration is off", forward, args, kwargs)
        sig = call_signature(args, kwargs)
        device = _first_device(sig.tensors, self.device_types)
        reason = self._reason(device, sig.tensors, module)
        if reason is not None:
            return self._eager(reason, forward, args, kwargs)
        assert device is not None and module is not None
        watch = self._watch(module)
        key = (id(module), watch.fingerprint(), sig.key, torch.is_grad_enabled(),
               torch.is_inference_mode_enabled(), self.settings.compile)
        entry = self.cache.get(key)
        if entry is not None:
            return self._replay(entry, sig.tensors)
        if key in self._failed:
            return self._eager("an earlier capture of this call failed", forward, args, kwargs)
        problem = watch.residency_problem(device)
        if problem is not None:
            return self._eager(problem, forward, args, kwargs)
        return self._capture(key, forward, module, original, sig, device, args, kwargs)

    # -- decisions ---------------------------------------------------------------------
    def _reason(self, device: torch.device | None, tensors: list[torch.Tensor], module: Any) -> str | None:
        if device is None:
            return "no CUDA input: CUDA graphs need a CUDA device (this run is on the CPU)"
        if module is None:
            return "the wrapper was given no module"
        if any(t.device != device for t in tensors):
            return "inputs on several devices (or CPU tensors among CUDA inputs)"
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return "gradients wanted (training): graphs are captured for inference only"
        if self.precheck is not None:
            return self.precheck(module)
        return None

    def _eager(self, reason: str, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        stats = self.stats
        stats.eager_calls += 1
        if reason not in stats.eager_reasons:
            log.info("Accelerate UNet: running eagerly: %s", reason)
        stats.eager_reasons[reason] = stats.eager_reasons.get(reason, 0) + 1
        return forward(*args, **kwargs)

    def _watch(self, module: Any) -> WeightWatch:
        watch = self._watches.get(id(module))
        if watch is None or watch.module is not module:
            watch = self._watches[id(module)] = WeightWatch(module)
        return watch

    def _target(self, forward: Callable[..., Any], module: Any, original: Callable[..., Any] | None) -> Callable:
        if not self.settings.compile:
            return forward
        if original is None:
            return forward  # another wrapper runs inside this one: capture it uncompiled
        held = self._compiled.get(id(module))
        if held is None or held[0] is not module:
            compiled = CompiledCall(original, "the diffusion UNet (under capture)", dynamic=False)
            held = self._compiled[id(module)] = (module, compiled)
        return held[1]

    # -- graphs --------------------------------------------------------------------------
    def _replay(self, entry: GraphEntry, tensors: list[torch.Tensor]) -> Any:
        for static, new in zip(entry.static_inputs, tensors, strict=True):
            if static is not new:
                static.copy_(new)
        entry.captured.replay()
        entry.replays += 1
        self.stats.replays += 1
        return _tree_map(torch.clone, entry.captured.outputs)

    def _capture(self, key: Any, forward: Callable[..., Any], module: Any, original: Callable[..., Any] | None,
                 sig: Any, device: torch.device, args: tuple, kwargs: dict) -> Any:
        static = [torch.empty_like(t).copy_(t) for t in sig.tensors]
        static_args, static_kwargs = sig.rebuild(static)
        target = self._target(forward, module, original)
        try:
            captured = self.capturer.capture(target, static_args, static_kwargs, device, self.settings.compile)
        except Exception as exc:  # noqa: BLE001 - any capture failure: eager for this signature
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            message = f"{type(exc).__name__}: {first}"
            log.warning("Accelerate UNet: capture failed (%s); this call signature runs eagerly", message)
            self.stats.failures.append(message)
            self._failed.add(key)
            if is_out_of_memory(exc):
                self.cache.clear()
            return self._eager(f"capture failed: {message}", forward, args, kwargs)
        stats = self.stats
        stats.captures += 1
        stats.capture_seconds.append(captured.seconds)
        stats.compile_seconds.append(captured.compile_seconds)
        stats.pool_bytes.append(captured.pool_bytes)
        entry = GraphEntry(captured, static, held=[*sig.held, module])
        self.cache.put(key, entry)
        log.info("Accelerate UNet: captured a graph in %.3f s (%d cached)", captured.seconds, len(self.cache))
        return self._replay(entry, sig.tensors)

    def release(self) -> None:
        """Drop every graph (their pool memory returns once no output of theirs is held)."""
        self.cache.clear()
        self._failed.clear()
