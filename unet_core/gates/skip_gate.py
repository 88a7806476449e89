"""Attention gates on the skip connections of a diffusion UNet (an ``output_block_patch``).

ComfyUI calls ``output_block_patch(h, hsp, transformer_options) -> (h, hsp)`` in each
output block just before ``torch.cat([h, hsp], 1)``; ``h`` is the decoder's input to
the block, ``hsp`` the skip popped from the encoder, both at the same resolution.
This gate rescales ``hsp`` per pixel by a map computed from ``h`` (the gating signal)
and ``hsp`` itself, as the additive gate of Attention U-Net does, and leaves ``h`` alone.

Parameter-free gate (the default; no trained weights). Per sample ``b`` and pixel ``p``::

    e_x(p) = || hsp[b, :, p] ||_2            e_g(p) = || h[b, :, p] ||_2      (over channels, fp32)
    x^ = (e_x - mean_p e_x) / sqrt(var_p e_x + eps)  g^ likewise   (per sample, over space; eps = 1e-5)
    alpha  = sigmoid(sharpness * (g^ + x^))                                 in (0, 1)

Trained gate (optional): ``alpha = AdditiveAttentionGate.attention(hsp, h)`` with the
block's weights from a file (``trained.py``, ``docs/gates.md``).

Either way::

    alpha' = floor + (1 - floor) * alpha                                    in [floor, 1]
    c      = strength * level_strength[level(block)] * [chunk selected]
    m      = 1 - c * (1 - alpha')                                           the applied map
    hsp   <- m * hsp

``c = 0`` (strength 0, level strength 0, an unselected level, or a batch chunk of the
pass not acted on) returns ``hsp`` unchanged, bitwise: whole tensors are returned as they
came, and rows of an unselected chunk are multiplied by exactly 1. For ``c`` in [0, 1]
``m`` moves linearly from 1 towards ``alpha'``, so the patched output moves smoothly away
from the unpatched one as the strength rises. The batch is split into equal chunks, one
per entry of ``transformer_options["cond_or_uncond"]`` (0 = cond, 1 = uncond); with no
such entry the whole batch counts as one cond chunk.

Cost per gated block: on CUDA with Triton, one fused kernel in two launches (``fused_gate.py``),
which in our UNet also writes the block's ``cat([h, hsp], 1)`` and returns ``h`` and ``hsp`` as
its two views, so the UNet does not copy them again (``skip_concat``); elsewhere, for trained
gates, and as the reference, about 10 eager kernels: two channel reductions written into one
[B, 2, H, W] buffer, one instance norm, add, sigmoid, one lerp for the applied map and one
multiply of ``hsp``. No host sync after a case's first call, no copy of the features.
``hsp`` is not modified in place (the tensor may be shared with the caller).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..diffusion.skip_concat import SKIP_CONCATENATION
from ..errors import GateError
from .fused_gate import FusedSkipGate, fused_usable
from .levels import SkipBlock, parse_level_strengths, parse_levels, skip_blocks

log = logging.getLogger(__name__)

PASSES = ("both", "cond", "uncond")
_PASS_CODE = {"cond": 0, "uncond": 1}


def energy_alpha(h: torch.Tensor, hsp: torch.Tensor, sharpness: float = 1.0, eps: float = 1e-5) -> torch.Tensor:
    """The parameter-free gate ``alpha`` [B, 1, H, W] in ``hsp``'s dtype, at ``hsp``'s resolution.

    Both norms are written straight into one [B, 2, H, W] buffer (no concatenation); the
    reductions accumulate in fp32 inside the kernel, and the one-channel maps stay in the
    features' dtype (in fp16 a norm overflows only if the RMS over channels exceeds ~65504 /
    sqrt(C), far beyond finite SD activations)."""
    batch, _, height, width = hsp.shape
    energy = torch.empty(batch, 2, height, width, dtype=hsp.dtype, device=hsp.device)
    torch.linalg.vector_norm(hsp, dim=1, keepdim=True, out=energy[:, 1:2])
    h = h if h.dtype == hsp.dtype else h.to(hsp.dtype)
    if h.shape[-2:] == hsp.shape[-2:]:
        torch.linalg.vector_norm(h, dim=1, keepdim=True, out=energy[:, 0:1])
    else:
        e_g = torch.linalg.vector_norm(h, dim=1, keepdim=True)
        energy[:, 0:1] = F.interpolate(e_g, size=(height, width), mode="bilinear", align_corners=False)
    # per-sample, per-map standardisation over space in one op: (e - mean) / sqrt(var + eps)
    z = torch.instance_norm(energy, None, None, None, None, True, 0.0, eps, torch.backends.cudnn.enabled)
    q = torch.add(z[:, 0:1], z[:, 1:2])
    if sharpness != 1.0:
        q.mul_(sharpness)
    return q.sigmoid_()


def floor_alpha(alpha: torch.Tensor, floor: float) -> torch.Tensor:
    """``alpha' = floor + (1 - floor) * alpha`` (a new tensor)."""
    return alpha.mul(1.0 - floor).add_(floor) if floor else alpha.clone()


def applied_map(alpha: torch.Tensor, coefficient: float, floor: float, one: torch.Tensor | None = None) -> torch.Tensor:
    """``m = 1 - c (1 - alpha')`` with ``alpha' = floor + (1 - floor) alpha``, folded into one
    affine map ``m = (1 - k) + k alpha = lerp(alpha, 1, 1 - k)`` with ``k = c (1 - floor)``
    (a new tensor; one kernel). ``one``: a 0-dim tensor 1 on alpha's device and dtype."""
    k = coefficient * (1.0 - floor)
    if one is None:
        one = torch.ones((), dtype=alpha.dtype, device=alpha.device)
    return torch.lerp(alpha, one, 1.0 - k)


def chunk_rows(batch: int, transformer_options: dict[str, Any], apply_to: str) -> tuple[bool, list[tuple[int, int]]]:
    """``(acts_at_all, row ranges left untouched)`` for this batch and pass choice."""
    if apply_to == "both":
        return True, []
    kinds = transformer_options.get("cond_or_uncond") or [0]
    if batch % len(kinds):
        raise GateError(f"skip gate: batch of {batch} does not split into {len(kinds)} cond/uncond chunks")
    size = batch // len(kinds)
    wanted = _PASS_CODE[apply_to]
    skipped = [(i * size, (i + 1) * size) for i, kind in enumerate(kinds) if kind != wanted]
    return len(skipped) < len(kinds), skipped


class GateMapRecorder:
    """Keeps the latest gate maps of each gated output block (on the device, detached).

    Filled by a :class:`SkipGatePatch` during sampling; read with :meth:`gate_map`. Maps are kept per output block and
    per pass (0 = cond, 1 = uncond): a model call overwrites the passes it runs, so cond and
    uncond survive when ComfyUI runs them in separate calls, and after sampling the recorder
    holds the last step's maps. Recording keeps views of tensors the gate computes anyway:
    no copy, no host sync.
    """

    def __init__(self, config: Any = None) -> None:
        self.config = config  # the model's layout, to read level selections against
        self.maps: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.blocks: dict[int, SkipBlock] = {}
        self.floors: dict[int, float] = {}
        self.calls = 0

    def gate_map(self, block_id: int, kind: int) -> torch.Tensor | None:
        """The recorded ``alpha'`` of a block and pass, [rows, 1, h, w] fp32, or None."""
        parts = self.maps.get((block_id, kind))
        if not parts:
            return None
        alpha = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
        return floor_alpha(alpha.float(), self.floors.get(block_id, 0.0))

    def record(self, block: SkipBlock, alpha: torch.Tensor, floor: float, cond_or_uncond: list[int] | None) -> None:
        """Keep ``alpha`` (before the floor) and the floor; ``gate_map`` applies it when read."""
        kinds = list(cond_or_uncond or [0])
        alpha = alpha.detach()
        self.floors[block.block_id] = float(floor)
        size = alpha.shape[0] // len(kinds) if alpha.shape[0] % len(kinds) == 0 else alpha.shape[0]
        if size == alpha.shape[0]:
            kinds = kinds[:1]
        fresh: dict[int, list[torch.Tensor]] = {}
        for i, kind in enumerate(kinds):
            fresh.setdefault(int(kind), []).append(alpha[i * size:(i + 1) * size])
        for kind, parts in fresh.items():
            self.maps[(block.block_id, kind)] = parts
        self.blocks[block.block_id] = block
        self.calls += 1

    def clear(self) -> None:
        self.maps.clear()
        self.blocks.clear()
        self.floors.clear()
        self.calls = 0

    def __deepcopy__(self, memo: dict) -> GateMapRecorder:
        return self  # shared on purpose: ComfyUI deep-copies model_options on clone()


@dataclass(frozen=True)
class SkipGateSettings:
    """What the user chose; ``coefficients`` maps output block id -> strength * level strength."""

    coefficients: dict[int, float]
    floor: float = 0.0
    sharpness: float = 1.0
    apply_to: str = "both"
    eps: float = 1e-5
    blocks: dict[int, SkipBlock] = field(default_factory=dict)


class SkipGatePatch:
    """The ``output_block_patch`` callable (ComfyUI's signature; works on any host's patcher)."""

    def __init__(self, settings: SkipGateSettings, trained: Any | None = None,
                 recorder: GateMapRecorder | None = None, fused: bool = True) -> None:
        self.settings = settings
        self.trained = trained
        self.recorder = recorder
        self._ones: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._fused_gate = FusedSkipGate(settings.sharpness, settings.eps)
        # fused=False: always the eager path (the reference; benchmarks compare both); trained gates are eager
        self._may_fuse = fused and trained is None

    def _one(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        one = self._ones.get(key)
        if one is None:
            one = self._ones[key] = torch.ones((), dtype=like.dtype, device=like.device)
        return one

    def _row_coefficients(self, batch: int, coefficient: float, skipped: list[tuple[int, int]]) -> tuple[float, ...]:
        """Per batch row ``k = c (1 - floor)``, 0 on skipped rows (the fused kernel's row coefficients)."""
        k = coefficient * (1.0 - self.settings.floor)
        if not skipped:
            return (k,) * batch
        values = [k] * batch
        for start, stop in skipped:
            values[start:stop] = [0.0] * (stop - start)
        return tuple(values)

    def __deepcopy__(self, memo: dict) -> SkipGatePatch:
        return self  # shared on purpose across ModelPatcher.clone(): the recorder and the fused gate's plans

    @property
    def fused_cases(self) -> int:
        """How many cases (layouts and row coefficients) this patch's fused gate has run or will run fused."""
        return self._fused_gate.fused_cases

    def alpha(self, block: SkipBlock, h: torch.Tensor, hsp: torch.Tensor) -> torch.Tensor | None:
        """``alpha`` for this block (in hsp's dtype), or None when a trained set has no gate for it."""
        if self.trained is not None:
            return self.trained.alpha(block, h, hsp)
        return energy_alpha(h, hsp, self.settings.sharpness, self.settings.eps)

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict[str, Any]):
        block_ref = transformer_options.get("block")
        if not block_ref or block_ref[0] != "output":
            return h, hsp
        s = self.settings
        block_id = block_ref[1]
        coefficient = s.coefficients.get(block_id)
        if coefficient is None:
            return h, hsp
        recorder = self.recorder
        acts, skipped = chunk_rows(hsp.shape[0], transformer_options, s.apply_to)
        acts = acts and coefficient != 0.0
        if not acts and recorder is None:
            return h, hsp
        if acts and self._may_fuse and fused_usable(h, hsp):
            # where the UNet takes the concatenation from a patch, the kernel writes it (skip_concat)
            concat = SKIP_CONCATENATION in transformer_options and h.dtype == hsp.dtype
            fused = self._fused_gate(h, hsp, self._row_coefficients(hsp.shape[0], coefficient, skipped),
                                     recorder is not None, concat)
            if fused is not None:
                out, alpha = fused
                if recorder is not None:
                    recorder.record(s.blocks[block_id], alpha, s.floor, transformer_options.get("cond_or_uncond"))
                return _handed_back(h, hsp, out, concat, transformer_options)
        block = s.blocks[block_id]
        alpha = self.alpha(block, h, hsp)
        if alpha is None:
            return h, hsp
        if recorder is not None:
            recorder.record(block, alpha, s.floor, transformer_options.get("cond_or_uncond"))
        if not acts:
            return h, hsp
        m = applied_map(alpha.to(hsp.dtype), coefficient, s.floor, self._one(hsp))
        for start, stop in skipped:
            m[start:stop] = 1.0
        return h, hsp * m


def _handed_back(h: torch.Tensor, hsp: torch.Tensor, out: torch.Tensor, concat: bool,
                 transformer_options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The patch's return for a fused gate's output: ``(h, m * hsp)``, or with ``concat`` the two
    channel slices of ``out = cat([h, m * hsp], 1)``, handed to the UNet as its concatenation."""
    if not concat:
        return h, out
    h, hsp = out.split_with_sizes((h.shape[1], hsp.shape[1]), 1)  # one call for both views
    transformer_options[SKIP_CONCATENATION] = (h, hsp, out)
    return h, hsp


def build_settings(config: Any, strength: float, levels: str = "all", level_strengths: str = "",
                   floor: float = 0.0, sharpness: float = 1.0, apply_to: str = "both") -> SkipGateSettings:
    """Check the user's choices against the model config and turn them into per-block coefficients."""
    if not 0.0 <= strength <= 10.0:
        raise GateError(f"strength {strength} is outside 0..10")
    if not 0.0 <= floor <= 1.0:
        raise GateError(f"floor {floor} is outside 0..1 (alpha' = floor + (1 - floor) * alpha)")
    if not 0.0 < sharpness <= 100.0:
        raise GateError(f"sharpness {sharpness} must be in (0, 100]")
    if apply_to not in PASSES:
        raise GateError(f"apply_to {apply_to!r} is not one of {', '.join(PASSES)}")
    chosen = set(parse_levels(levels, config))
    per_level = parse_level_strengths(level_strengths, config)
    blocks = {b.block_id: b for b in skip_blocks(config)}
    # Every block of a chosen level gets an entry (maybe 0: then it is only recorded, never changed).
    coefficients = {k: float(strength * per_level[b.level]) for k, b in blocks.items() if b.level in chosen}
    return SkipGateSettings(coefficients=coefficients, floor=float(floor), sharpness=float(sharpness),
                            apply_to=apply_to, blocks=blocks)
