"""A fast inference path for the segmentation U-Nets: folded norms, channels_last, bf16, compile.

Speeds (``SPEEDS``):

- ``"exact"``: the model as it is, in its own dtype (fp32 for a freshly loaded model); nothing
  is copied. Today's behaviour.
- ``"fast"``: an eval copy with every eval BatchNorm folded into the convolution before it
  (:func:`fold_batch_norms`). On CUDA the copy's weights are cast to bf16 (fp16 where the GPU
  has no bf16), it runs channels_last under autocast of that dtype (so ops that autocast keeps
  in fp32, e.g. GroupNorm and softmax, still run in fp32), and each conv + ReLU site (a
  ``conv, [folded norm], ReLU`` Sequential, the residual blocks' ``relu(conv(h) + shortcut)``,
  the ResNet stem) runs as one cuDNN conv + bias (+ add) + ReLU kernel where that agrees and is
  measured faster at the first call per shape (:class:`ConvReLU`, :func:`fuse_conv_relu`). On CPU and other devices: the folded fp32 copy only (CPU
  bf16 convolutions are slower, and channels_last does not pay there).
- ``"compiled"``: the ``"fast"`` copy (without the cuDNN conv + ReLU kernels: inductor fuses by
  itself) wrapped in ``torch.compile(mode=compile_mode)``. When compiling raises (no triton, no
  C++ compiler, an unsupported Python, a graph break that fails), at construction or at any
  call, a warning is logged and that copy runs eagerly (as ``"fast"``) from then on.
  Out-of-memory errors and the pack's own errors (a refused input) are re-raised, not taken for
  compile failures. A new input shape (the short last tile batch of a row, another tile size)
  recompiles once (``torch.compile`` turns the changing dimension dynamic at its second size);
  the compiled copy is cached, so that cost is paid once per model, not per run.

Why folding is exact: in eval mode ``BN(z) = gamma * (z - mean) / sqrt(var + eps) + beta``, an
affine map per output channel ``c``, so for ``z = W * x + b``::

    s_c  = gamma_c / sqrt(var_c + eps)
    W'_c = W_c * s_c                    (Conv2d: weight dim 0; ConvTranspose2d: weight dim 1)
    b'_c = (b_c - mean_c) * s_c + beta_c

computed in float64 and cast back to the weight's dtype. Pairs are found structurally: adjacent
entries of a plain ``nn.Sequential`` (whose forward feeds each entry to the next), and named
attribute pairs of the pack's blocks whose forward is ``norm(conv(x))``
(:data:`FOLD_PAIRS`: ``conv1/norm1``, ``conv2/norm2`` of the residual block, ``conv{i}/bn{i}`` of
the ResNet blocks and stem). A pair with a forward hook on either module, a norm in training
mode or without running statistics, or a channel mismatch is left alone (still correct, only
slower). The caller's model is never modified: folding works on a deep copy.

Tolerances (what the tests and ``benchmarks/bench_segmentation.py --agree`` check):

- folded vs unfolded, same dtype: float64 agrees to ~1e-12 relative; fp32 to ~1e-5 relative
  (the folded weights are rounded once to fp32 instead of BN being applied in fp32).
- ``"fast"`` bf16 vs ``"exact"`` fp32: probabilities (sigmoid/softmax of the logits) within about
  2e-2 absolute (:data:`BF16_PROB_TOLERANCE`, what the tests and ``--agree`` check on 512 px
  batches: measured max 3.1e-4 on an H100); masks at 0.5 agree except for pixels whose exact
  probability lies within that distance of the threshold. Over the 67 M pixels of the 8192 px
  tiled benchmark (random weights) the mean difference was 2.3e-3 and single pixels reached
  3.3e-2 (``"compiled"``: 4.7e-2); 0.5 % of mask pixels flipped.

Caching: :func:`prepare_inference` keeps the prepared forward per (source model, device, speed,
compile mode) in a weak-keyed cache, so repeated node runs neither refold nor recompile, and the
entry dies with the source model. At most :data:`CACHE_PER_MODEL` entries are kept per model
(least recently used dropped first), bounding the extra memory to that many copies.
An entry is reused only while the source model's fingerprint is unchanged: per parameter and
buffer its name, identity, dtype, shape and autograd version counter (``_version``, bumped by
every in-place write: optimizer steps, ``load_state_dict``, ``copy_``). Tensors made under
``torch.inference_mode`` (every model a ComfyUI node loads) have no version counter, and
buffers (norm statistics) become new tensors on every device move; for those the fingerprint
adds float64 sums of their values and magnitudes (two reductions per tensor,
one device sync), compared to 1e-9 relative so that moving the model between devices (the
nodes move it to the GPU and back on every run) keeps the entry, while any real weight change
drops it. Devices and storage addresses are deliberately not part of it, for the same reason.
:func:`clear_inference_cache` drops entries (all, or one model's) to free their memory.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..compiling import CompiledCall, is_out_of_memory
from ..errors import SegmentationError

log = logging.getLogger(__name__)

SPEEDS: tuple[str, ...] = ("exact", "fast", "compiled")
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
FP32_FOLD_RTOL = 1e-5
BF16_PROB_TOLERANCE = 2e-2
CACHE_PER_MODEL = 2

_CONV = nn.modules.conv._ConvNd
_NORM = nn.modules.batchnorm._BatchNorm

# class -> ((conv attribute, norm attribute), ...) for blocks whose forward applies norm(conv(x))
FOLD_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {}


def register_fold_pairs(cls: type, pairs: tuple[tuple[str, str], ...]) -> None:
    """Declare that ``cls.forward`` feeds ``conv`` straight into ``norm`` (and uses conv's output nowhere else)."""
    FOLD_PAIRS[cls] = tuple(pairs)


def _register_pack_blocks() -> None:
    from .blocks import ResidualDoubleConv
    from .resnet import BasicBlock, Bottleneck, ResNetEncoder

    register_fold_pairs(ResidualDoubleConv, (("conv1", "norm1"), ("conv2", "norm2")))
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


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks
                or getattr(module, "_forward_hooks_with_kwargs", None)
                or getattr(module, "_backward_hooks", None))


def _foldable(conv: Any, norm: Any) -> bool:
    return (isinstance(conv, _CONV) and isinstance(norm, _NORM) and not norm.training
            and norm.running_mean is not None and norm.running_var is not None
            and norm.num_features == conv.out_channels and not _hooked(conv) and not _hooked(norm)
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


# ---------------------------------------------------------------- conv + bias + ReLU in one kernel

def _compiling() -> bool:
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(check()) if check is not None else False


class ConvReLU(nn.Module):
    """A (folded) Conv2d followed by ReLU, ``relu(conv(x) [+ z])``, as one cuDNN kernel where measured faster.

    Eager PyTorch runs conv, then the bias add, (the residual add,) then the ReLU: extra passes
    over the output. ``torch.cudnn_convolution_relu`` / ``cudnn_convolution_add_relu`` do it in
    one (cuDNN runtime fusion, channels_last fp16/bf16). That is not always faster (some shapes,
    e.g. 7x7 kernels, hit slow engines), so the first call per input shape and dtype checks that
    both ways agree and times them (a few runs each); the fused kernel is kept only when it
    agrees and wins. Off CUDA, or when the fused call raises, it is ``relu(conv(x) [+ z])``.
    Not for ``torch.compile`` (inductor fuses by itself).
    """

    TRIALS = 3

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
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
        try:
            fused = self._fused(x, z)
        except Exception as exc:  # noqa: BLE001 - no engine for this shape: the plain path
            if is_out_of_memory(exc):
                raise
            log.debug("cuDNN conv%s + relu unavailable for %s: %s", "" if z is None else " + add", tuple(x.shape), exc)
            return False
        plain = self._plain(x, z)
        scale = float(plain.float().abs().max()) or 1.0
        if not torch.isfinite(fused).all() or float((fused.float() - plain.float()).abs().max()) > 2e-2 * scale:
            log.warning("cuDNN fused conv + relu disagrees with conv + relu for %s; not used", tuple(x.shape))
            return False
        del fused, plain

        def timed(fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            fn(x, z)
            start.record()
            for _ in range(self.TRIALS):
                fn(x, z)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return timed(self._fused) < 0.97 * timed(self._plain)

    def fusable(self, x: torch.Tensor) -> bool:
        """Whether the fused kernel may be tried for ``x`` (CUDA, zero padding, eager)."""
        c = self.conv
        return (x.is_cuda and c.padding_mode == "zeros" and not isinstance(c.padding, str)
                and not _compiling())

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
    from .blocks import ResidualDoubleConv
    from .resnet import BasicBlock, Bottleneck

    layouts = {ResidualDoubleConv: (("conv1", "norm1"), ("conv2", "norm2"), "shortcut"),
               BasicBlock: (("conv1", "bn1"), ("conv2", "bn2"), "downsample"),
               Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), "downsample")}
    layout = layouts.get(type(module))
    if layout is None or _hooked(module):
        return None
    pairs, shortcut_name = layout[:-1], layout[-1]
    convs = [module._modules[c] for c, _ in pairs]
    if (any(type(module._modules[n]) is not nn.Identity for _, n in pairs)
            or any(type(c) is not nn.Conv2d or _hooked(c) for c in convs)):
        return None
    return convs, module._modules.get(shortcut_name)


def fuse_conv_relu(model: nn.Module) -> int:
    """Rewrite conv + ReLU runs of a folded copy into :class:`ConvReLU` layers (in place); returns how many.

    Found structurally, like the folding: ``Conv2d, [Identity,] ReLU`` in a plain Sequential
    (the Identity is a folded norm); the pack's residual blocks (ResidualDoubleConv, ResNet
    BasicBlock / Bottleneck) with folded norms become :class:`FusedResidual`; the ResNet stem's
    ``conv1`` / ``relu``. Meant for a copy after :func:`fold_batch_norms`.
    """
    from .resnet import ResNetEncoder

    count = 0
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            parts = _residual_parts(child) if child is not None else None
            if parts is not None:
                setattr(module, name, FusedResidual(*parts))
                count += len(parts[0])
    for module in list(model.modules()):
        if (type(module) is ResNetEncoder and type(module.conv1) is nn.Conv2d and type(module.bn1) is nn.Identity
                and type(module.relu) is nn.ReLU and not (_hooked(module.conv1) or _hooked(module.relu))):
            module.conv1, module.relu = ConvReLU(module.conv1), nn.Identity()  # relu is used only after conv1
            count += 1
        if not (isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward):
            continue
        names = list(module._modules)
        for i, name in enumerate(names):
            conv = module._modules[name]
            if type(conv) is not nn.Conv2d or _hooked(conv):
                continue
            j = i + 1
            while j < len(names) and type(module._modules[names[j]]) is nn.Identity:
                j += 1
            if j - i > 2 or j >= len(names):
                continue
            relu = module._modules[names[j]]
            if type(relu) is not nn.ReLU or _hooked(relu) or any(_hooked(module._modules[n]) for n in names[i + 1:j]):
                continue
            setattr(module, name, ConvReLU(conv))
            setattr(module, names[j], nn.Identity())
            count += 1
    return count


# ---------------------------------------------------------------- prepared forwards

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
    to :class:`ConvReLU`).
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
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        compiled = self._compiled
        return self._run(compiled if compiled is not None and compiled.active else self.module, x).float()


def _exact(model: nn.Module, device: torch.device) -> InferenceForward:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return InferenceForward(model, device, "exact", dtype, None, False)


def _build(model: nn.Module, device: torch.device, speed: str, compile_mode: str,
           fuse_relu: bool) -> InferenceForward:
    low = low_precision_dtype(device)
    folded = fold_batch_norms(model).to(device)
    fused = fuse_conv_relu(folded) if (fuse_relu and speed == "fast" and device.type == "cuda") else 0
    if low is not None:
        folded = folded.to(dtype=low, memory_format=torch.channels_last)
        prepared = InferenceForward(folded, device, speed, low, low, True, compile_mode)
    else:
        dtype = next((p.dtype for p in folded.parameters() if p.is_floating_point()), torch.float32)
        prepared = InferenceForward(folded, device, speed, dtype, None, False, compile_mode)
    prepared.fused_layers = fused
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
                      compile_mode: str = "default", fuse_relu: bool = True) -> InferenceForward:
    """A forward ``x -> logits float32`` for ``model`` at ``speed`` on ``device`` (cached; see the module doc).

    ``device`` defaults to the model's. ``compile_mode`` is ``torch.compile``'s mode for
    ``"compiled"`` (``"default"``: its default). ``fuse_relu``: for ``"fast"`` on CUDA, run
    conv + bias (+ residual) + ReLU as one cuDNN kernel where measured faster (:class:`ConvReLU`).
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
    key = (str(device), speed, compile_mode, bool(fuse_relu))
    stamp = fingerprint(model)
    with _LOCK:
        entries = _CACHE.get(model)
        if entries is not None and key in entries and same_fingerprint(entries[key][0], stamp):
            entries.move_to_end(key)
            return entries[key][1]
    try:
        prepared = _build(model, device, speed, compile_mode, fuse_relu)
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
