"""What a segmentation run shows besides its masks: a tinted overlay and agreement with ground truth."""

from __future__ import annotations

import torch

from ...errors import InputError
from ..metrics import dice_score, iou_score
from .images import inspect_images, to_model_input

PALETTE = ((1.0, 0.2, 0.2), (0.2, 0.9, 0.2), (0.2, 0.4, 1.0), (1.0, 0.9, 0.1), (0.9, 0.2, 0.9), (0.1, 0.9, 0.9))


def overlay(images: torch.Tensor, masks: torch.Tensor, plane_names: list[str], alpha: float = 0.45) -> torch.Tensor:
    """IMAGE [B, H, W, 3]: the input with each mask plane tinted in its own colour (background planes skipped)."""
    batch = images.shape[0]
    planes = masks.shape[0] // batch
    plan = inspect_images(images, 3)
    out = torch.empty(batch, images.shape[1], images.shape[2], 3, dtype=torch.float32)
    for b in range(batch):
        base = to_model_input(images[b], plan, torch.zeros(3), torch.ones(3)).permute(1, 2, 0)
        for k in range(planes):
            if planes > 1 and plane_names[b * planes + k] == "background":
                continue
            colour = torch.tensor(PALETTE[k % len(PALETTE)])
            weight = masks[b * planes + k][..., None] * alpha
            base = base * (1 - weight) + colour * weight
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
