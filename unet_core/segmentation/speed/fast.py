"""A fast inference path for the segmentation U-Nets: folded norms, channels_last, bf16, compile.

Speeds (``SPEEDS``):

- ``"exact"``: the model as it is, in its own dtype (fp32 for a freshly loaded model); nothing
  is copied.
- ``"fast"``: an eval copy with every eval BatchNorm folded into the convolution before it
  (:func:`.bn_folding.fold_batch_norms`). On CUDA the copy's weights are cast to bf16 (fp16 where the GPU
  has no bf16), it runs channels_last (channels_last_3d for the 3D models) under autocast of that
  dtype (so ops that autocast keeps in fp32, e.g. GroupNorm and softmax, still run in fp32), and each conv + ReLU site (a
  ``conv, [folded norm], ReLU`` Sequential, the residual blocks' ``relu(conv(h) + shortcut)``,
  the ResNet stem) runs as one cuDNN conv + bias (+ add) + ReLU kernel where
  :func:`.conv_relu.fused_kernel_rule` allows it (a rule of shape, dtype and device capability:
  the same choice on every run). The U-Net and Attention U-Net decoder steps skip their
  concatenation and their transposed convolution's bias pass (:mod:`.split_concat`; on every
  device, the same math; ``split_concat=False`` leaves them as built). On CPU and other devices:
  the folded fp32 copy with those decoder steps only (CPU bf16 convolutions are slower, and
  channels_last does not pay there).
- ``"compiled"``: the folded copy in bf16 channels_last (without the cuDNN conv + ReLU kernels
  and the split decoder steps: inductor fuses and plans concatenations by itself) wrapped in
  ``torch.compile(mode=compile_mode)``. When compiling raises (no triton, no C++ compiler, an
  unsupported Python, a graph break that fails), at construction or at any call, a warning is
  logged and that copy runs eagerly from then on (reported as ``"fast"``). Out-of-memory errors
  and the pack's own errors (a refused input) are re-raised, not taken for compile failures. A
  new input shape (the short last tile batch of a row, another tile size) recompiles once
  (``torch.compile`` turns the changing dimension dynamic at its second size); the compiled copy
  is cached, so that cost is paid once per model, not per run.

Tolerances (what the tests and ``benchmarks/bench_segmentation.py --agree`` check):

- folded vs unfolded, same dtype: float64 agrees to ~1e-12 relative; fp32 to
  :data:`FP32_FOLD_RTOL` relative (the folded weights are rounded once to fp32 instead of BN
  being applied in fp32).
- ``"fast"`` bf16 vs ``"exact"`` fp32: probabilities (sigmoid/softmax of the logits) within
  :data:`BF16_PROB_TOLERANCE` absolute; masks agree except for pixels whose exact probability
  lies within that distance of the threshold.

Caching: :func:`prepare_inference` keeps the prepared forward per (source model, device, speed,
compile mode, options) in a weak-keyed cache, so repeated node runs neither refold nor
recompile, and the entry dies with the source model. At most :data:`CACHE_PER_MODEL` entries
are kept per model (least recently used dropped first), bounding the extra memory to that many
copies. An entry is reused only while the source model's fingerprint is unchanged: per
parameter and buffer its name, identity, dtype, shape and autograd version counter
(``_version``, bumped by every in-place write: optimizer steps, ``load_state_dict``, ``copy_``).
Tensors made under ``torch.inference_mode`` (every model a ComfyUI node loads) have no version
counter, and buffers (norm statistics) become new tensors on every device move; for those the
fingerprint adds float64 sums of their values and magnitudes (two reductions per tensor, one
device sync), compared to :data:`CHECKSUM_RTOL` relative so that moving the model between
devices (the nodes move it to the GPU and back on every run) keeps the entry, while any real
weight change drops it. Devices and storage addresses are deliberately not part of it, for the
same reason. :func:`clear_inference_cache` drops entries (all, or one model's) to free their memory.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...compiling import CompiledCall, is_out_of_memory
from ...errors import SegmentationError
from .bn_folding import fold_batch_norms
from .conv_relu import fuse_conv_relu
from .split_concat import split_decoder_concats

log = logging.getLogger(__name__)

SPEEDS: tuple[str, ...] = ("exact", "fast", "compiled")
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
FP32_FOLD_RTOL = 1e-5
BF16_PROB_TOLERANCE = 2e-2
CACHE_PER_MODEL = 2

def low_precision_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on a CUDA device that supports it, else fp16 on CUDA; None elsewhere (CPU stays fp32)."""
    if device.type != "cuda":
        return None
    try:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    except Exception:  # noqa: BLE001 - an odd build: be conservative
        return torch.float16


class InferenceForward:
    """``forward(x [N, C, h, w]) -> logits [N, K, h, w] float32``, with what it runs on.

    Attributes: ``speed`` (what runs now: ``"compiled"`` falls back to ``"fast"``),
    ``requested`` (the speed asked for), ``module`` (the module called: the model itself for
    ``"exact"``, the folded copy otherwise), ``device``, ``dtype`` (weights), ``autocast``
    (the autocast dtype or None), ``channels_last``, ``fused_layers`` (conv + ReLU pairs given
    to :class:`ConvReLU`), ``split_steps`` (decoder steps run without their concatenation,
    :mod:`.split_concat`).
    """

    def __init__(self, module: nn.Module, device: torch.device, speed: str, input_dtype: torch.dtype,
                 autocast: torch.dtype | None, channels_last: bool, compile_mode: str | None = None) -> None:
        self.module = module
        self.device = device
        self.requested = speed
        self.speed = speed
        self.dtype = input_dtype
        self.autocast = autocast
        self.channels_last = channels_last
        self.compile_mode = compile_mode
        self.fused_layers = 0
        self.split_steps = 0
        self._compiled: CompiledCall | None = None
        if speed == "compiled":
            self._compiled = CompiledCall(module, "the segmentation U-Net ('fast' eager path instead)",
                                          mode=None if compile_mode == "default" else compile_mode,
                                          on_fallback=self._fall_back)
            if not self._compiled.active:
                self._compiled = None

    def _fall_back(self, exc: BaseException) -> None:
        self.speed = "fast"

    def _run(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        amp = (torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None
               else contextlib.nullcontext())
        with torch.inference_mode(), amp:
            return fn(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device, dtype=self.dtype)
        if self.channels_last and x.ndim in (4, 5):
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        compiled = self._compiled
        return self._run(compiled if compiled is not None and compiled.active else self.module, x).float()


def _exact(model: nn.Module, device: torch.device) -> InferenceForward:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return InferenceForward(model, device, "exact", dtype, None, False)


def _build(model: nn.Module, device: torch.device, speed: str, compile_mode: str,
           fuse_relu: bool, split_concat: bool) -> InferenceForward:
    low = low_precision_dtype(device)
    folded = fold_batch_norms(model)
    cudnn_fusion = fuse_relu and speed == "fast" and device.type == "cuda"
    # not for "compiled": inductor plans the concatenation itself
    splits = split_decoder_concats(folded, fused_kernels=cudnn_fusion) if speed == "fast" and split_concat else 0
    folded = folded.to(device)
    fused = (fuse_conv_relu(folded) + splits) if cudnn_fusion else 0  # each split step merges in a ConvReLU
    if low is not None:
        volume = int(getattr(model, "spatial_dims", 2)) == 3  # 3D models: channels_last_3d
        folded = folded.to(dtype=low, memory_format=torch.channels_last_3d if volume else torch.channels_last)
        prepared = InferenceForward(folded, device, speed, low, low, True, compile_mode)
    else:
        dtype = next((p.dtype for p in folded.parameters() if p.is_floating_point()), torch.float32)
        prepared = InferenceForward(folded, device, speed, dtype, None, False, compile_mode)
    prepared.fused_layers = fused
    prepared.split_steps = splits
    return prepared


# ---------------------------------------------------------------- cache

_CACHE: weakref.WeakKeyDictionary[nn.Module, OrderedDict[tuple, tuple[Any, InferenceForward]]] = \
    weakref.WeakKeyDictionary()
_LOCK = threading.RLock()


CHECKSUM_RTOL = 1e-9


def fingerprint(model: nn.Module) -> tuple[tuple, tuple]:
    """What must not change for a prepared copy to stay valid (see the module docstring).

    Device moves (``model.to(device)`` and back, as the nodes do around every run) keep it:
    parameters stay the same objects with the same version counters, and value sums agree to
    rounding (compared with :data:`CHECKSUM_RTOL` by :func:`same_fingerprint`).
    """
    entries, sums = [], []
    tensors = itertools.chain(((n, t, True) for n, t in model.named_parameters()),
                              ((n, t, False) for n, t in model.named_buffers()))
    for name, t, is_param in tensors:
        # buffers are replaced by new tensors on every device move (parameters keep their object and
        # version counter), so a buffer is known by its values; they are small (norm statistics)
        by_value = t.is_inference() or not is_param
        entries.append((name, id(t) if is_param else None, t.dtype, tuple(t.shape), None if by_value else t._version))
        if by_value:
            d = t.detach() if t.is_floating_point() else t.detach().to(torch.float64)  # bool / int buffers
            sums.append(torch.stack([d.sum(dtype=torch.float64), d.abs().sum(dtype=torch.float64)])
                        if d.numel() and not d.is_complex() else torch.zeros(2, dtype=torch.float64, device=d.device))
    checksum: tuple = ()
    if sums:
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for pair in sums:
            by_device.setdefault(pair.device, []).append(pair)
        checksum = tuple(tuple(row) for group in by_device.values() for row in torch.stack(group).tolist())
    return tuple(entries), checksum


def same_fingerprint(a: tuple[tuple, tuple], b: tuple[tuple, tuple]) -> bool:
    """Equal structure and versions, and value sums equal to :data:`CHECKSUM_RTOL` of their magnitude."""
    if a[0] != b[0] or len(a[1]) != len(b[1]):
        return False
    for (s1, m1), (s2, m2) in zip(a[1], b[1], strict=True):
        scale = max(m1, m2, 1e-30)
        if abs(s1 - s2) > CHECKSUM_RTOL * scale or abs(m1 - m2) > CHECKSUM_RTOL * scale:
            return False
    return True


def clear_inference_cache(model: nn.Module | None = None) -> None:
    """Drop the prepared copies of ``model`` (all models when None)."""
    with _LOCK:
        if model is None:
            _CACHE.clear()
        else:
            _CACHE.pop(model, None)


def prepare_inference(model: nn.Module, device: torch.device | str | None = None, speed: str = "exact",
                      compile_mode: str = "default", fuse_relu: bool = True,
                      split_concat: bool = True) -> InferenceForward:
    """A forward ``x -> logits float32`` for ``model`` at ``speed`` on ``device`` (cached; see the module doc).

    ``device`` defaults to the model's. ``compile_mode`` is ``torch.compile``'s mode for
    ``"compiled"`` (``"default"``: its default). ``fuse_relu``: for ``"fast"`` on CUDA, run
    conv + bias (+ residual) + ReLU as one cuDNN kernel where the rule allows (:class:`ConvReLU`).
    ``split_concat``: for ``"fast"``, run the decoder steps without their concatenation
    (:mod:`.split_concat`).
    ``"exact"`` runs the model itself (not cached: there is nothing to prepare). Unknown speeds
    or compile modes raise SegmentationError.
    """
    if speed not in SPEEDS:
        raise SegmentationError(f"inference speed {speed!r}: expected one of {list(SPEEDS)}")
    if compile_mode not in COMPILE_MODES:
        raise SegmentationError(f"compile mode {compile_mode!r}: expected one of {list(COMPILE_MODES)}")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    if speed == "exact":
        return _exact(model, device)
    key = (str(device), speed, compile_mode, bool(fuse_relu), bool(split_concat))
    stamp = fingerprint(model)
    with _LOCK:
        entries = _CACHE.get(model)
        if entries is not None and key in entries and same_fingerprint(entries[key][0], stamp):
            entries.move_to_end(key)
            return entries[key][1]
    try:
        prepared = _build(model, device, speed, compile_mode, fuse_relu, split_concat)
    except Exception as exc:  # noqa: BLE001 - e.g. a model that cannot be deep-copied
        if is_out_of_memory(exc):
            raise
        log.warning("cannot prepare a %r copy of %s (%s); running it as it is", speed, type(model).__name__, exc)
        return _exact(model, device)
    with _LOCK:
        entries = _CACHE.setdefault(model, OrderedDict())
        entries.pop(key, None)
        entries[key] = (stamp, prepared)
        while len(entries) > CACHE_PER_MODEL:
            entries.popitem(last=False)
    return prepared
