"""Recorded skip-gate maps -> a ComfyUI MASK batch ``[N, H, W]`` float32 in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import GateError
from .levels import LATENT_FACTOR
from .skip_gate import GateMapRecorder

PASS_CODES = {"cond": (0,), "uncond": (1,), "all": (0, 1)}
COMBINES = ("per block", "mean")
SIZES = ("image", "latent")


def maps_to_mask(recorder: GateMapRecorder | None, levels: tuple[int, ...] | None = None, passes: str = "cond",
                 combine: str = "per block", size: str = "image") -> tuple[torch.Tensor, list[str]]:
    """The recorded gate maps ``alpha'`` as a MASK batch, and one label per mask.

    ``per block``: for each recorded output block (in block order) its rows of the chosen
    passes, so ``N = blocks x rows``. ``mean``: the per-pixel mean over those blocks,
    ``N = rows``. Maps are resized bilinearly to the latent size (``size="latent"``) or
    8x that (``"image"``), the latent size being a block's map size times its downscale.
    """
    if recorder is None:
        raise GateError("Skip Gate Maps: the gate node was run with record_maps off; nothing was recorded")
    if passes not in PASS_CODES or combine not in COMBINES or size not in SIZES:
        raise GateError(f"Skip Gate Maps: pass must be one of {list(PASS_CODES)}, combine one of {list(COMBINES)}, "
                        f"size one of {list(SIZES)}")
    picked: list[tuple[int, int, torch.Tensor]] = []
    for block_id, kind in sorted(recorder.maps):
        block = recorder.blocks[block_id]
        if kind in PASS_CODES[passes] and (levels is None or block.level in levels):
            picked.append((block_id, kind, recorder.gate_map(block_id, kind)))
    if not picked:
        what = "no sampling has run through the gated model yet" if not recorder.maps else \
            f"no recorded map matches pass={passes!r} and the chosen levels"
        raise GateError(f"Skip Gate Maps: {what} (connect the sampler's LATENT so this node runs after it)")
    first = picked[0]
    down = recorder.blocks[first[0]].downscale
    latent_hw = (first[2].shape[-2] * down, first[2].shape[-1] * down)
    target = latent_hw if size == "latent" else (latent_hw[0] * LATENT_FACTOR, latent_hw[1] * LATENT_FACTOR)
    resized, labels = [], []
    for block_id, kind, alpha in picked:
        block = recorder.blocks[block_id]
        up = F.interpolate(alpha.float().cpu(), size=target, mode="bilinear", align_corners=False)[:, 0]
        resized.append(up.clamp_(0.0, 1.0))
        labels += [f"output block {block_id} (level {block.level}, {block.image_factor}) "
                   f"{'cond' if kind == 0 else 'uncond'} row {r}" for r in range(alpha.shape[0])]
    if combine == "mean":
        rows = {t.shape[0] for t in resized}
        if len(rows) != 1:
            raise GateError("Skip Gate Maps: passes recorded with different batch sizes; use combine='per block'")
        # group by pass: mean over blocks of the same pass, passes stacked
        by_kind: dict[int, list[torch.Tensor]] = {}
        for (_, kind, _), t in zip(picked, resized, strict=True):
            by_kind.setdefault(kind, []).append(t)
        means = [torch.stack(ts).mean(0) for _, ts in sorted(by_kind.items())]
        labels = [f"mean of {len(ts)} blocks, {'cond' if k == 0 else 'uncond'} row {r}"
                  for k, ts in sorted(by_kind.items()) for r in range(ts[0].shape[0])]
        return torch.cat(means, 0).contiguous(), labels
    return torch.cat(resized, 0).contiguous(), labels
