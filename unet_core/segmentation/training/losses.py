"""Training losses: (binary) cross-entropy and soft Dice, with optional per-pixel weights.

Loss names: ``"ce+dice"`` (default), ``"ce"``, ``"dice"``. "ce" is binary cross-entropy on
the logit when the model has one output channel (sigmoid) and softmax cross-entropy when it
has several; "dice" is the soft Dice loss 1 - 2Σpt / (Σp + Σt) over the batch (per class,
averaged, for several channels).

Per-pixel weights (such as the U-Net paper's border weight map, :mod:`.border_weights`) weight
the cross-entropy term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import InputError

LOSSES = ("ce+dice", "ce", "dice")


# -- losses --------------------------------------------------------------------------------
def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2Σpt + eps) / (Σp + Σt + eps) per channel over batch and pixels, averaged over channels."""
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    return (1.0 - (2 * inter + eps) / (denom + eps)).mean()


@dataclass
class LossSums:
    """The sums a batch's loss is made of: additive over samples, so ranks can add theirs up.

    ``ce_sum``: the (weighted) cross-entropy summed over pixels; ``pixels``: how many;
    ``intersection`` / ``total`` [K]: the soft Dice sums per class channel (Σpt and Σp + Σt).
    """

    ce_sum: torch.Tensor
    pixels: torch.Tensor
    intersection: torch.Tensor
    total: torch.Tensor

    def vector(self) -> torch.Tensor:
        """The sums in one 1-D tensor ``[ce_sum, pixels, intersection..., total...]``."""
        return torch.cat([self.ce_sum.reshape(1), self.pixels.reshape(1).to(self.ce_sum), self.intersection,
                          self.total])

    @classmethod
    def from_vector(cls, vector: torch.Tensor) -> LossSums:
        classes = (vector.numel() - 2) // 2
        return cls(vector[0], vector[1], vector[2:2 + classes], vector[2 + classes:])


def loss_sums(logits: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None) -> LossSums:
    """The :class:`LossSums` of logits [B, K, H, W] against a target [B, H, W] (0/1, or class labels for K > 1)."""
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise InputError(f"loss: logits {tuple(logits.shape)} do not match the target {tuple(target.shape)}")
    classes = logits.shape[1]
    if classes == 1:
        t = target.float()[:, None]
        ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")[:, 0]
        probs, onehot = torch.sigmoid(logits), t
    else:
        labels = target.long()
        ce = F.cross_entropy(logits, labels, reduction="none")
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(labels.clamp(0, classes - 1), classes).permute(0, 3, 1, 2).float()
    if pixel_weights is not None:
        ce = ce * pixel_weights.to(ce)
    dims = (0, 2, 3)
    return LossSums(ce.sum(), torch.tensor(float(ce.numel()), device=ce.device), (probs * onehot).sum(dims),
                    probs.sum(dims) + onehot.sum(dims))


def loss_from_sums(sums: LossSums, kind: str = "ce+dice", dice_weight: float = 1.0, eps: float = 1.0) -> torch.Tensor:
    """The loss ``kind`` from a batch's sums: mean cross-entropy and/or the soft Dice loss (see soft_dice_loss)."""
    if kind not in LOSSES:
        raise InputError(f"unknown loss {kind!r}; expected one of {list(LOSSES)}")
    total = sums.ce_sum.new_zeros(())
    if kind in ("ce+dice", "ce"):
        total = total + sums.ce_sum / sums.pixels
    if kind in ("ce+dice", "dice"):
        total = total + dice_weight * (1.0 - (2 * sums.intersection + eps) / (sums.total + eps)).mean()
    return total


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce+dice",
                      pixel_weights: torch.Tensor | None = None, dice_weight: float = 1.0) -> torch.Tensor:
    """The training loss of logits [B, K, H, W] against a target [B, H, W] (0/1, or class labels for K > 1).

    ``pixel_weights`` [B, H, W] (e.g. the border weight map) weights the cross-entropy term.
    The loss is a function of sums over the batch (:func:`loss_sums`, :func:`loss_from_sums`).
    """
    if kind not in LOSSES:
        raise InputError(f"unknown loss {kind!r}; expected one of {list(LOSSES)}")
    return loss_from_sums(loss_sums(logits, target, pixel_weights), kind, dice_weight)
