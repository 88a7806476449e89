"""What a segmentation run shows besides its masks: an overlay (outlines per object) and agreement with ground truth."""

from __future__ import annotations

import torch

from ...errors import InputError
from ..components import connected_components, object_outlines
from ..metrics import dice_score, iou_score
from .images import inspect_images, to_model_input

PALETTE = ((1.0, 0.2, 0.2), (0.2, 0.9, 0.2), (0.2, 0.4, 1.0), (1.0, 0.9, 0.1), (0.9, 0.2, 0.9), (0.1, 0.9, 0.9))


OVERLAY_STYLES = ("outlines", "outlines, a colour per object", "tint")


def _object_colours(count: int) -> torch.Tensor:
    """[count + 1, 3] distinct-looking colours for labels 0..count (golden-ratio hues; 0 unused)."""
    hues = (torch.arange(count + 1, dtype=torch.float32) * 0.618034) % 1.0
    k = (torch.tensor([5.0, 3.0, 1.0]) + hues[:, None] * 6) % 6  # HSV to RGB with S = 0.8, V = 1
    return 1.0 - 0.8 * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def overlay(images: torch.Tensor, masks: torch.Tensor, plane_names: list[str], alpha: float = 0.45,
            style: str = "outlines") -> torch.Tensor:
    """IMAGE [B, H, W, 3]: the input with each mask plane shown in its own colour (background planes skipped).

    ``style``: "tint" blends the plane's colour in by ``alpha``; "outlines" tints lightly
    (``alpha`` / 3) and draws a one-pixel outline around every connected object, so touching
    objects stay apart; "outlines, a colour per object" gives each object its own colour.
    The masks themselves are not changed.
    """
    if style not in OVERLAY_STYLES:
        raise InputError(f"overlay style {style!r}: expected one of {list(OVERLAY_STYLES)}")
    batch = images.shape[0]
    planes = masks.shape[0] // batch
    plan = inspect_images(images, 3)
    out = torch.empty(batch, images.shape[1], images.shape[2], 3, dtype=torch.float32)
    for b in range(batch):
        base = to_model_input(images[b], plan, torch.zeros(3), torch.ones(3)).permute(1, 2, 0)
        for k in range(planes):
            if planes > 1 and plane_names[b * planes + k] == "background":
                continue
            plane = masks[b * planes + k].float().cpu()
            colour = torch.tensor(PALETTE[k % len(PALETTE)])
            if style == "tint":
                weight = plane[..., None] * alpha
                base = base * (1 - weight) + colour * weight
                continue
            labels, count = connected_components(plane.numpy() > 0.5)
            if style == "outlines":
                fill = colour.expand(*plane.shape, 3)
            else:
                fill = _object_colours(count)[torch.from_numpy(labels).long()]
            weight = plane[..., None] * (alpha / 3)
            base = base * (1 - weight) + fill * weight
            edge = torch.from_numpy(object_outlines(labels))[..., None]
            base = torch.where(edge, fill, base)
        out[b] = base
    return out


def compare_masks(masks: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """(Dice, IoU) of predicted masks against ground truth, all pixels pooled (truth > 0.5 is foreground)."""
    if truth.ndim == 4 and truth.shape[1] == 1:
        truth = truth[:, 0]
    if masks.shape != truth.shape:
        raise InputError(f"input 'ground_truth': shape {tuple(truth.shape)} does not match the masks "
                         f"{tuple(masks.shape)}")
    target = (truth > 0.5).float()
    return float(dice_score(masks, target)), float(iou_score(masks, target))
