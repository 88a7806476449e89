"""Trained skip-gate weights: one :class:`AdditiveAttentionGate` per output block, in a safetensors file.

Format (``docs/gates.md``): tensor keys ``level{N}.{j}.<gate state-dict key>`` where ``N`` is
the level (0 = finest, as in ``block_out_channels``) and ``j`` the block's position inside its
level's group of ``layers_per_block + 1`` output blocks, e.g. ``level3.0.W_g.0.weight``.
Header metadata: ``format = unet_lab.skip_gates``, ``format_version = 1``, ``family``,
``block_out_channels`` and ``layers_per_block`` (JSON), ``norm`` (``none`` | ``batch``) and
``channels`` (JSON ``{"level3.0": [skip, gating, inter], ...}``). Blocks without a gate in
the file are left alone.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GateError
from ..file_modes import make_like_new_file
from .additive import AdditiveAttentionGate
from .levels import SkipBlock, skip_blocks, skip_layout

FORMAT = "unet_lab.skip_gates"
FORMAT_VERSION = "1"
NORMS = {"none": None, "batch": nn.BatchNorm2d}
_KEY = re.compile(r"^(level\d+\.\d+)\.(.+)$")


def base_family(family: str | None) -> str:
    """``sd1_inpaint`` -> ``sd1``: inpaint UNets have the base family's skips."""
    text = (family or "").strip().lower().replace("-", "_")
    return text.split("_")[0] if text else ""


def _gate_state_keys(norm: str) -> set[str]:
    probe = AdditiveAttentionGate(2, 2, 1, norm=NORMS[norm])
    return set(probe.state_dict())


def save_trained_gates(path: str | Path, gates: dict[str, AdditiveAttentionGate], family: str, config: Any,
                       norm: str = "none", overwrite: bool = False) -> Path:
    """Write ``gates`` (``{"level3.0": gate, ...}``) atomically; refuses to replace a file unless asked."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise GateError(f"{path}: file exists; pass overwrite=True to replace it")
    if norm not in NORMS:
        raise GateError(f"norm {norm!r} is not one of {', '.join(NORMS)}")
    blocks = {b.key: b for b in skip_blocks(config)}
    layout = skip_layout(config)
    tensors: dict[str, torch.Tensor] = {}
    channels: dict[str, list[int]] = {}
    for key, gate in gates.items():
        if key not in blocks:
            raise GateError(f"{path.name}: no output block {key} in this config")
        w_x = gate.W_x[0].weight
        channels[key] = [int(w_x.shape[1]), int(gate.W_g[0].weight.shape[1]), int(w_x.shape[0])]
        for name, tensor in gate.state_dict().items():
            tensors[f"{key}.{name}"] = tensor.detach().contiguous().cpu()
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "family": family,
        "block_out_channels": json.dumps(list(layout.block_out_channels)),
        "layers_per_block": str(layout.layers_per_block), "norm": norm,
        "channels": json.dumps(channels, sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        make_like_new_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class TrainedGates:
    """Gates by output block id, cast lazily to the features' device and dtype."""

    def __init__(self, gates: dict[int, AdditiveAttentionGate], source: str = "") -> None:
        self.gates = {k: g.eval().requires_grad_(False) for k, g in gates.items()}
        self.source = source
        self._cast: dict[tuple[int, torch.device, torch.dtype], AdditiveAttentionGate] = {}

    def block_ids(self) -> set[int]:
        return set(self.gates)

    def alpha(self, block: SkipBlock, h: torch.Tensor, hsp: torch.Tensor) -> torch.Tensor | None:
        gate = self.gates.get(block.block_id)
        if gate is None:
            return None
        key = (block.block_id, hsp.device, hsp.dtype)
        cast = self._cast.get(key)
        if cast is None:  # nn.Module.to works in place: cast a copy, keep the fp32 CPU original
            cast = self._cast[key] = copy.deepcopy(gate).to(device=hsp.device, dtype=hsp.dtype)
        with torch.no_grad():
            return cast.attention(hsp, h.to(hsp.dtype))


def _meta_json(meta: dict[str, str], name: str, where: str) -> Any:
    if name not in meta:
        raise GateError(f"{where}: header metadata has no '{name}' (not a UNet Lab skip-gate file?)")
    try:
        return json.loads(meta[name])
    except json.JSONDecodeError as exc:
        raise GateError(f"{where}: metadata '{name}' is not JSON ({exc})") from exc


def load_trained_gates(path: str | Path, config: Any, family: str) -> TrainedGates:
    """Read a skip-gate file and check it fits a model of ``family`` with ``config``."""
    from safetensors import safe_open

    path = Path(path)
    where = path.name
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except FileNotFoundError:
        raise GateError(f"{where}: file not found ({path})") from None
    except Exception as exc:  # safetensors raises its own error types for broken headers
        raise GateError(f"{where}: not a readable safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise GateError(f"{where}: metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    file_family = meta.get("family", "")
    if not file_family:
        raise GateError(f"{where}: metadata has no 'family'")
    if base_family(file_family) != base_family(family):
        raise GateError(f"{where}: gates were trained for {file_family}, but the model is {family}")
    norm = meta.get("norm", "none")
    if norm not in NORMS:
        raise GateError(f"{where}: metadata norm {norm!r} is not one of {', '.join(NORMS)}")
    file_channels = _meta_json(meta, "block_out_channels", where)
    layout = skip_layout(config)
    model_channels = list(layout.block_out_channels)
    if file_channels != model_channels or meta.get("layers_per_block") != str(layout.layers_per_block):
        raise GateError(f"{where}: gates were made for block_out_channels={file_channels}, layers_per_block="
                        f"{meta.get('layers_per_block')}; the model has {model_channels}, {layout.layers_per_block}")
    declared = _meta_json(meta, "channels", where)
    if not isinstance(declared, dict) or not all(isinstance(v, list) for v in declared.values()):
        raise GateError(f"{where}: metadata 'channels' must map each gate to its [skip, gating, inter] channels, "
                        f"got {str(declared)[:80]}")

    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if not match:
            raise GateError(f"{where}: unexpected key {key!r} (keys are level<N>.<j>.<gate key>)")
        grouped.setdefault(match.group(1), {})[match.group(2)] = tensor
    if not grouped:
        raise GateError(f"{where}: holds no gate")

    blocks = {b.key: b for b in skip_blocks(config)}
    expected_keys = _gate_state_keys(norm)
    gates: dict[int, AdditiveAttentionGate] = {}
    for prefix, state in sorted(grouped.items()):
        block = blocks.get(prefix)
        if block is None:
            raise GateError(f"{where}: {prefix} is not an output block of this model "
                            f"(levels 0..{len(model_channels) - 1}, positions 0..{layout.layers_per_block})")
        missing, extra = expected_keys - set(state), set(state) - expected_keys
        if missing or extra:
            raise GateError(f"{where}: {prefix} keys do not fit a norm={norm} gate; missing {sorted(missing)}, "
                            f"unexpected {sorted(extra)}")
        w_x, w_g, psi = state["W_x.0.weight"], state["W_g.0.weight"], state["psi.0.weight"]
        if w_x.ndim != 4 or w_g.ndim != 4 or psi.ndim != 4:
            raise GateError(f"{where}: {prefix} weights must be 1x1 convolutions [out, in, 1, 1]")
        inter = int(w_x.shape[0])
        want = {"W_x.0.weight": (inter, block.skip_channels, 1, 1),
                "W_g.0.weight": (inter, block.gating_channels, 1, 1),
                "psi.0.weight": (1, inter, 1, 1)}
        for name, shape in want.items():
            if tuple(state[name].shape) != shape:
                raise GateError(f"{where}: {prefix}.{name} has shape {list(state[name].shape)}, expected "
                                f"{list(shape)} (output block {block.block_id}: skip {block.skip_channels} ch, "
                                f"gating {block.gating_channels} ch)")
        if prefix in declared and list(declared[prefix]) != [block.skip_channels, block.gating_channels, inter]:
            raise GateError(f"{where}: metadata channels of {prefix} {declared[prefix]} disagree with its tensors")
        gate = AdditiveAttentionGate(block.skip_channels, block.gating_channels, inter, norm=NORMS[norm])
        try:
            gate.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        except RuntimeError as exc:
            raise GateError(f"{where}: {prefix} does not load ({exc})") from exc
        gates[block.block_id] = gate
    return TrainedGates(gates, source=str(path))
