"""Patch a MODEL (any object with ComfyUI's ModelPatcher patch API) with the skip gate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import GateError
from .levels import describe_blocks
from .skip_gate import GateMapRecorder, SkipGatePatch, build_settings
from .trained import load_trained_gates

log = logging.getLogger(__name__)


def apply_skip_gate(model: Any, config: Any, family: str, strength: float, levels: str = "all",
                    level_strengths: str = "", floor: float = 0.0, sharpness: float = 1.0,
                    apply_to: str = "both", weights: str | Path | None = None,
                    record_maps: bool = False) -> tuple[Any, GateMapRecorder | None, str]:
    """A clone of ``model`` with the gate added as an ``output_block_patch``; the input is not touched.

    Returns ``(patched clone, recorder or None, report)``. Patches run in the order they
    were added, so a FreeU added before this node sees the ungated skip and one added
    after sees the gated skip; weight patches (LoRA) are independent of both.
    """
    settings = build_settings(config, strength, levels, level_strengths, floor, sharpness, apply_to)
    trained = load_trained_gates(weights, config, family) if weights else None
    recorder = GateMapRecorder(config) if record_maps else None
    patch = SkipGatePatch(settings, trained=trained, recorder=recorder)
    try:
        clone = model.clone()
        clone.set_model_output_block_patch(patch)
    except AttributeError as exc:
        raise GateError(f"the MODEL input has no ComfyUI patch API ({exc})") from exc
    acting = {k: c for k, c in settings.coefficients.items()
              if trained is None or k in trained.block_ids()}
    gate_kind = f"trained gates from {Path(weights).name}" if trained is not None else "parameter-free gate"
    report = (f"{family}: {gate_kind}, strength {strength:g}, floor {floor:g}, pass {apply_to}\n"
              + describe_blocks(list(settings.blocks.values()), acting))
    log.info("skip gate on %d of %d output blocks", sum(1 for c in acting.values() if c), len(settings.blocks))
    return clone, recorder, report
