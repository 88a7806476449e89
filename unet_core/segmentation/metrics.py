"""Overlap metrics for binary masks: Dice and IoU (Jaccard).

Both take prediction and target of the same shape (any), values in {0, 1} or probabilities
(soft versions), and reduce either globally (all pixels of the batch pooled: the figure the
training report uses) or per image (``per_image=True``: one value per leading index).
Empty prediction and empty target count as a perfect match (1.0).
"""

from __future__ import annotations

import torch


def _sums(pred: torch.Tensor, target: torch.Tensor, per_image: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    p = pred.detach().double()
    t = target.detach().double()
    if per_image:
        p, t = p.reshape(p.shape[0], -1), t.reshape(t.shape[0], -1)
        return (p * t).sum(1), p.sum(1), t.sum(1)
    return (p * t).sum(), p.sum(), t.sum()


def dice_score(pred: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """2|P∩T| / (|P| + |T|)."""
    inter, ps, ts = _sums(pred, target, per_image)
    denom = ps + ts
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-12), torch.ones_like(denom))


def iou_score(pred: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """|P∩T| / |P∪T|."""
    inter, ps, ts = _sums(pred, target, per_image)
    union = ps + ts - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.ones_like(union))
